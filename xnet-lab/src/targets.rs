//! The project's performance targets and whether one benchmark run's figures meet them: the
//! "Targets" section of bench.md and bench.json.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::stats::{Ratio, Summary};

/// Which way a figure must lie from its target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    pub fn met_by(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(t) => value >= t,
            Goal::AtMost(t) => value <= t,
        }
    }

    fn describe(self, unit: &str) -> String {
        match self {
            Goal::AtLeast(t) => format!(">= {}", with_unit(t, unit)),
            Goal::AtMost(t) => format!("<= {}", with_unit(t, unit)),
        }
    }
}

/// A goal's bound: `1.4x`, `1.0x`, `85 ns`, `0.4 s` (ratios glued to their `x` and with at least
/// one decimal, other units after a space).
fn with_unit(v: f64, unit: &str) -> String {
    let mut number = format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string();
    if unit == "x" && !number.contains('.') {
        number.push_str(".0");
    }
    match unit {
        "x" => format!("{number}x"),
        "" => number,
        u => format!("{number} {u}"),
    }
}

/// A measured value: ratios with 2 decimals, other figures with as many as their size needs
/// (see [`unit_decimals`]).
fn value_text(v: f64, unit: &str) -> String {
    match unit {
        "x" => format!("{v:.2}x"),
        "" => format!("{v:.d$}", d = unit_decimals(v)),
        u => format!("{v:.d$} {u}", d = unit_decimals(v)),
    }
}

/// What a run measured for one target.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub value: f64,
    /// The range the runs allow (a ratio: the lowest and highest any pairing of runs gives).
    pub range: Option<(f64, f64)>,
    /// The largest relative spread, (max - min) / median, of the figures behind the value.
    pub spread: Option<f64>,
    /// The figures behind the value, for the reader.
    pub detail: String,
}

impl Measured {
    /// The ratio of two figures measured over runs, named `numerator` and `denominator`, shown
    /// in the detail with `decimals` decimals after scaling by `scale` (bit/s to Gbit/s, say) and
    /// followed by `unit`.
    pub fn ratio(
        numerator: (&str, &Summary),
        denominator: (&str, &Summary),
        scale: f64,
        decimals: usize,
        unit: &str,
    ) -> Measured {
        let r = Ratio::of(numerator.1, denominator.1);
        let part =
            |(name, s): (&str, &Summary)| format!("{name} {} {unit}", s.scaled(scale).describe(decimals));
        Measured {
            value: r.value,
            range: Some((r.low, r.high)),
            spread: Some(numerator.1.relative_spread().max(denominator.1.relative_spread())),
            detail: format!("{} over {}", part(numerator), part(denominator)),
        }
    }

    /// A figure measured in several runs: their median, range and spread.
    pub fn runs(s: &Summary) -> Measured {
        Measured {
            value: s.median,
            range: Some((s.min, s.max)),
            spread: Some(s.relative_spread()),
            detail: format!("median of {} runs", s.runs),
        }
    }

    /// A figure measured once (or as the mean of many samples taken in one step).
    pub fn single(value: f64, detail: impl Into<String>) -> Measured {
        Measured { value, range: None, spread: None, detail: detail.into() }
    }
}

/// One target of the project, and what the run measured for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub what: String,
    pub goal: Goal,
    /// `x` for ratios, otherwise the unit of the value (`ns`, `s`, `MiB`, `ms`).
    pub unit: &'static str,
    /// The largest relative spread the figures behind the value may have (0.15: under 15%).
    pub max_spread: Option<f64>,
    /// `None`: this run did not measure it (the mode was left out, or the bench has no step for
    /// it yet).
    pub measured: Option<Measured>,
}

/// Whether a target was met.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Met,
    /// Why not, in a few words.
    NotMet(String),
    NotMeasured,
}

impl Target {
    pub fn verdict(&self) -> Verdict {
        let Some(m) = &self.measured else { return Verdict::NotMeasured };
        if m.value.is_nan() {
            return Verdict::NotMeasured;
        }
        let mut why = Vec::new();
        if !self.goal.met_by(m.value) {
            why.push(format!("{} is not {}", value_text(m.value, self.unit), self.goal.describe(self.unit)));
        }
        if let (Some(limit), Some(spread)) = (self.max_spread, m.spread)
            && spread >= limit
        {
            why.push(format!("spread {:.0}% is not under {:.0}%", spread * 100.0, limit * 100.0));
        }
        if why.is_empty() { Verdict::Met } else { Verdict::NotMet(why.join("; ")) }
    }

    fn goal_text(&self) -> String {
        let mut g = self.goal.describe(self.unit);
        if let Some(limit) = self.max_spread {
            let _ = write!(g, ", spread under {:.0}%", limit * 100.0);
        }
        g
    }

    fn measured_text(&self) -> String {
        let Some(m) = &self.measured else { return "not measured".into() };
        let decimals = if self.unit == "x" { 2 } else { unit_decimals(m.value) };
        let mut t = value_text(m.value, self.unit);
        if let Some((lo, hi)) = m.range {
            let _ = write!(t, " ({lo:.decimals$}..{hi:.decimals$}");
            if let Some(s) = m.spread {
                let _ = write!(t, ", spread {:.0}%", s * 100.0);
            }
            t.push(')');
        }
        if !m.detail.is_empty() {
            let _ = write!(t, ": {}", m.detail);
        }
        t
    }

    pub fn to_json(&self) -> Value {
        let verdict = match self.verdict() {
            Verdict::Met => "met".to_string(),
            Verdict::NotMet(_) => "not met".to_string(),
            Verdict::NotMeasured => "not measured".to_string(),
        };
        let (lo, hi) = self.measured.as_ref().and_then(|m| m.range).unzip();
        json!({
            "target": self.what,
            "goal": self.goal_text(),
            "unit": self.unit,
            "value": self.measured.as_ref().map(|m| m.value),
            "low": lo,
            "high": hi,
            "spread": self.measured.as_ref().and_then(|m| m.spread),
            "detail": self.measured.as_ref().map(|m| m.detail.clone()),
            "verdict": verdict,
            "why_not": match self.verdict() { Verdict::NotMet(w) => Some(w), _ => None },
        })
    }
}

/// What the bench's scale step measured, as far as the targets need it.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleFigures {
    /// The agent with this many static peers in its config file ...
    pub static_peers: u32,
    /// ... was ready this many seconds after it started (over several starts) ...
    pub static_ready_s: Summary,
    /// ... with this peak resident memory (VmHWM), MiB.
    pub static_peak_rss_mib: Summary,
    /// An agent following etcd with many leases (the target: 10,000). `None` while the scale step
    /// does not measure it; the report then says "not measured".
    pub etcd_leases: Option<EtcdAtScale>,
}

/// An agent following etcd that holds many leases.
#[derive(Clone, Debug, PartialEq)]
pub struct EtcdAtScale {
    pub leases: u32,
    /// The agent's peak resident memory (VmHWM), MiB.
    pub agent_peak_rss_mib: f64,
    /// From writing one more lease to etcd until it is in every host's map, seconds.
    pub one_lease_to_every_map_s: f64,
}

impl ScaleFigures {
    /// The scale targets: the agent with 100,000 static peers (time to ready, peak RSS) and with
    /// 10,000 etcd leases (peak RSS, one new lease to every map).
    pub fn targets(&self) -> Vec<Target> {
        let peers = |what: &str| format!("agent with {} static peers: {what}", thousands(self.static_peers));
        let etcd = self.etcd_leases.as_ref();
        let leases = etcd.map_or(10_000, |e| e.leases);
        let etcd_what = |what: &str| format!("etcd with {} leases: {what}", thousands(leases));
        vec![
            Target {
                what: peers("time to ready"),
                goal: Goal::AtMost(0.4),
                unit: "s",
                max_spread: None,
                measured: Some(Measured::runs(&self.static_ready_s)),
            },
            Target {
                what: peers("peak RSS"),
                goal: Goal::AtMost(40.0),
                unit: "MiB",
                max_spread: None,
                measured: Some(Measured::runs(&self.static_peak_rss_mib)),
            },
            Target {
                what: etcd_what("agent peak RSS"),
                goal: Goal::AtMost(40.0),
                unit: "MiB",
                max_spread: None,
                measured: etcd.map(|e| Measured::single(e.agent_peak_rss_mib, "one run")),
            },
            Target {
                what: etcd_what("one new lease to every map"),
                goal: Goal::AtMost(100.0),
                unit: "ms",
                max_spread: None,
                measured: etcd.map(|e| Measured::single(e.one_lease_to_every_map_s * 1e3, "one run")),
            },
        ]
    }
}

/// `100,000`.
fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Decimals for a figure of this size: 3 below 1, 2 below 10, 0 from 10 on.
fn unit_decimals(v: f64) -> usize {
    match v.abs() {
        x if x < 1.0 => 3,
        x if x < 10.0 => 2,
        _ => 0,
    }
}

/// The targets as a markdown table: target, measured, goal, verdict.
pub fn markdown(targets: &[Target]) -> String {
    let mut md = String::from("| target | measured | goal | |\n|---|---|---|---|\n");
    for t in targets {
        let verdict = match t.verdict() {
            Verdict::Met => "met".to_string(),
            Verdict::NotMet(why) => format!("**not met** ({why})"),
            Verdict::NotMeasured => "not measured".to_string(),
        };
        let _ = writeln!(md, "| {} | {} | {} | {verdict} |", t.what, t.measured_text(), t.goal_text());
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(v: &[f64]) -> Summary {
        Summary::of(v).expect("measured")
    }

    fn target(goal: Goal, max_spread: Option<f64>, measured: Option<Measured>) -> Target {
        Target { what: "t".into(), goal, unit: "x", max_spread, measured }
    }

    #[test]
    fn goals_compare_either_way_and_include_the_bound() {
        assert!(Goal::AtLeast(1.4).met_by(1.4));
        assert!(!Goal::AtLeast(1.4).met_by(1.39));
        assert!(Goal::AtMost(85.0).met_by(85.0));
        assert!(!Goal::AtMost(85.0).met_by(85.5));
        assert_eq!(Goal::AtLeast(1.0).describe("x"), ">= 1.0x");
        assert_eq!(Goal::AtLeast(1.15).describe("x"), ">= 1.15x");
        assert_eq!(Goal::AtMost(0.4).describe("s"), "<= 0.4 s");
        assert_eq!(Goal::AtMost(85.0).describe("ns"), "<= 85 ns");
    }

    #[test]
    fn ratio_target_met_or_not_by_the_ratio_of_medians() {
        let xnet = summary(&[15.0, 16.0, 17.5, 16.5, 15.5]);
        let kernel = summary(&[10.0, 11.0, 12.0, 10.5, 11.5]);
        let m = Measured::ratio(("xnet vxlan", &xnet), ("kernel vxlan", &kernel), 1.0, 1, "Gbit/s");
        assert!((m.value - 16.0 / 11.0).abs() < 1e-12);
        assert_eq!(m.range, Some((15.0 / 12.0, 17.5 / 10.0)));
        assert_eq!(
            m.detail,
            "xnet vxlan 16.0 (15.0..17.5, 16%) Gbit/s over kernel vxlan 11.0 (10.0..12.0, 18%) Gbit/s"
        );
        assert_eq!(target(Goal::AtLeast(1.4), None, Some(m.clone())).verdict(), Verdict::Met);
        assert_eq!(
            target(Goal::AtLeast(1.5), None, Some(m)).verdict(),
            Verdict::NotMet("1.45x is not >= 1.5x".into())
        );
    }

    #[test]
    fn spread_limit_applies_to_the_noisier_figure() {
        let xnet = summary(&[30.0, 31.0, 32.0]);
        let steady = summary(&[29.0, 29.5, 30.0]);
        let noisy = summary(&[25.0, 29.5, 30.0]);
        let ok = Measured::ratio(("xnet gre", &xnet), ("plain", &steady), 1.0, 1, "Gbit/s");
        assert_eq!(target(Goal::AtLeast(1.0), Some(0.15), Some(ok)).verdict(), Verdict::Met);
        let bad = Measured::ratio(("xnet gre", &xnet), ("plain", &noisy), 1.0, 1, "Gbit/s");
        assert!((bad.spread.expect("spread") - 5.0 / 29.5).abs() < 1e-12);
        assert_eq!(
            target(Goal::AtLeast(1.0), Some(0.15), Some(bad)).verdict(),
            Verdict::NotMet("spread 17% is not under 15%".into())
        );
    }

    #[test]
    fn unmeasured_targets_say_so_everywhere() {
        let t = Target {
            what: "etcd".into(),
            goal: Goal::AtMost(40.0),
            unit: "MiB",
            max_spread: None,
            measured: None,
        };
        assert_eq!(t.verdict(), Verdict::NotMeasured);
        let md = markdown(std::slice::from_ref(&t));
        assert!(md.contains("| etcd | not measured | <= 40 MiB | not measured |"), "{md}");
        assert_eq!(t.to_json()["verdict"], "not measured");
        let nan = Target { measured: Some(Measured::single(f64::NAN, "")), ..t };
        assert_eq!(nan.verdict(), Verdict::NotMeasured);
    }

    #[test]
    fn scale_targets_read_the_scale_step_and_wait_for_etcd() {
        let mut scale = ScaleFigures {
            static_peers: 100_000,
            static_ready_s: Summary::of(&[0.35, 0.3, 0.38]).unwrap(),
            static_peak_rss_mib: Summary::of(&[55.0]).unwrap(),
            etcd_leases: None,
        };
        let t = scale.targets();
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].what, "agent with 100,000 static peers: time to ready");
        assert_eq!(t[0].verdict(), Verdict::Met);
        assert_eq!(t[1].verdict(), Verdict::NotMet("55 MiB is not <= 40 MiB".into()));
        assert_eq!(t[2].what, "etcd with 10,000 leases: agent peak RSS");
        assert_eq!(t[2].verdict(), Verdict::NotMeasured);
        assert_eq!(t[3].verdict(), Verdict::NotMeasured);
        scale.etcd_leases =
            Some(EtcdAtScale { leases: 10_000, agent_peak_rss_mib: 30.0, one_lease_to_every_map_s: 0.12 });
        let t = scale.targets();
        assert_eq!(t[2].verdict(), Verdict::Met);
        assert_eq!(t[3].verdict(), Verdict::NotMet("120 ms is not <= 100 ms".into()));
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn markdown_and_json_carry_value_goal_and_verdict() {
        let t = Target {
            what: "tc decap with delivery, net ns".into(),
            goal: Goal::AtMost(85.0),
            unit: "ns",
            max_spread: None,
            measured: Some(Measured::single(122.4, "mean of 10000 runs")),
        };
        let md = markdown(std::slice::from_ref(&t));
        assert!(
            md.contains(
                "| tc decap with delivery, net ns | 122 ns: mean of 10000 runs | <= 85 ns | **not met** (122 ns is not <= 85 ns) |"
            ),
            "{md}"
        );
        let j = t.to_json();
        assert_eq!(j["verdict"], "not met");
        assert_eq!(j["value"], 122.4);
        assert_eq!(j["goal"], "<= 85 ns");
        assert_eq!(j["why_not"], "122 ns is not <= 85 ns");
    }
}
