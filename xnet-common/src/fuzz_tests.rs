//! The fixed-seed fuzz slice of the packet decisions: mutated frames (see [`crate::mutate`])
//! through both classifiers, each decision checked by [`crate::oracle`] (against a reference
//! written independently from the rules, and for what must hold whatever the frame).
//!
//! `XNET_FUZZ_CASES` sets the number of mutated frames per classifier (default 100,000).

use crate::egress::EgressDecision;
use crate::mutate::frames::{FRAME_DICTIONARY, FRAME_FIELDS, egress_seeds, ingress_seeds};
use crate::mutate::{Hints, Rng, check_fuzz_seeds, fix_ipv4_checksum, libfuzzer_dictionary, mutate};
use crate::oracle::{check_decap, check_egress};

fn cases() -> usize {
    std::env::var("XNET_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

#[test]
fn mutated_frames_through_the_ingress_decision() {
    let seeds = ingress_seeds();
    let hints = Hints { dictionary: FRAME_DICTIONARY, fields: FRAME_FIELDS, max_len: 1600 };
    let mut rng = Rng::new(0x1e55);
    let mut seen = std::collections::BTreeMap::<std::string::String, usize>::new();
    for case in 0..cases() {
        let mut f = rng.pick(&seeds).clone();
        mutate(&mut rng, &mut f, &hints);
        if rng.chance(60) {
            fix_ipv4_checksum(&mut f, 14);
        }
        let got = check_decap(&f, case as u8);
        *seen.entry(std::format!("{got:?}")).or_default() += 1;
    }
    // The mutations reach every decision (a seed set or mutator that stopped doing so would make
    // this test vacuous).
    for want in [
        "Pass",
        "Decap(Vxlan)",
        "Decap(Udp)",
        "Decap(Gre)",
        "Decap(GreKeyed)",
        "Drop(DropBadOuterChecksum)",
        "Drop(DropOuterFragment)",
        "Drop(DropOuterNotLocal)",
        "Drop(DropUnknownPeer)",
        "Drop(DropTruncated)",
        "Drop(DropBadVni)",
        "Drop(DropBadInnerProtocol)",
        "Drop(DropBadGreHeader)",
        "Drop(DropBadGreKey)",
        "Drop(DropInnerNotLocal)",
        "Drop(DropInnerSourceNotPeer)",
        "Drop(DropUntunnelledNotDirectPeer)",
    ] {
        assert!(cases() < 10_000 || seen.contains_key(want), "no case gave {want}: {seen:?}");
    }
}

/// Inputs of decap_classify the fuzzer found failing (the first byte picks the CONFIG), kept as
/// found.
const DECAP_FINDINGS: &[&[u8]] = &[
    // Behind a NAT: UDP to the VXLAN port with its header cut short, to a local container from a
    // stranger: not a tunnel packet, so an untunnelled drop (146); padded, a whole tunnel packet
    // with a bad checksum. Right both times: the padding check now knows 146 of a frame cut short
    // depends on its length.
    &[
        0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00, 0x45, 0x10,
        0x00, 0x66, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x92, 0x09, 0xc6, 0x12, 0x00, 0x08, 0x0a, 0xf4, 0x01,
        0x05, 0x08, 0x01, 0x21, 0x18, 0x0a,
    ],
];

#[test]
fn decap_fuzz_findings_stay_fixed() {
    for input in DECAP_FINDINGS {
        check_decap(&input[1..], input[0]);
    }
}

#[test]
fn mutated_frames_through_the_egress_decision() {
    let seeds = egress_seeds();
    let hints = Hints { dictionary: FRAME_DICTIONARY, fields: FRAME_FIELDS, max_len: 1600 };
    let mut rng = Rng::new(0xe9e55);
    let mut seen = std::collections::BTreeMap::<std::string::String, usize>::new();
    for _ in 0..cases() {
        let mut f = rng.pick(&seeds).clone();
        mutate(&mut rng, &mut f, &hints);
        let kind = match check_egress(&f) {
            EgressDecision::Pass => std::string::String::from("Pass"),
            EgressDecision::Encapsulate { .. } => "Encapsulate".into(),
            EgressDecision::Drop(o) => std::format!("{o:?}"),
        };
        *seen.entry(kind).or_default() += 1;
    }
    for want in ["Pass", "Encapsulate", "DropSourceNotLocal"] {
        assert!(cases() < 10_000 || seen.contains_key(want), "no case gave {want}: {seen:?}");
    }
}

/// The files fuzz/ is given for the frame fuzzers: the seed corpora and the dictionary (committed).
/// The first byte of a decap_classify seed picks the CONFIG ([`crate::oracle::config`]): each frame
/// with every format, unkeyed; GRE keyed; behind a NAT; and in turn untunnelled open, GRE alone,
/// udp alone, VXLAN alone.
fn fuzz_files() -> std::vec::Vec<(std::string::String, std::vec::Vec<u8>)> {
    let mut files = std::vec::Vec::new();
    let mut seeds = |dir: &str, seeds: std::vec::Vec<std::vec::Vec<u8>>| {
        for (i, s) in seeds.into_iter().enumerate() {
            files.push((std::format!("seeds/{dir}/seed-{i:02}"), s));
        }
    };
    let turns = [4u8, 8 | 16, 8 | 32, 16 | 32];
    let decap = ingress_seeds()
        .into_iter()
        .enumerate()
        .flat_map(|(i, f)| [0, 1, 2, turns[i % turns.len()]].map(|which| [&[which][..], &f].concat()))
        .collect();
    seeds("decap_classify", decap);
    seeds("egress_classify", egress_seeds());
    files.push(("dicts/frames.dict".into(), libfuzzer_dictionary(FRAME_DICTIONARY).into_bytes()));
    files
}

/// The committed seeds and dictionary of the frame fuzzers are what [`fuzz_files`] makes of the
/// current seeds. With `XNET_WRITE_FUZZ_SEEDS=1` it writes them instead (after changing the seeds):
/// `XNET_WRITE_FUZZ_SEEDS=1 cargo test -p xnet-common --lib fuzz_seeds`.
#[test]
fn fuzz_seeds_are_current() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let files = fuzz_files();
    check_fuzz_seeds(&fuzz, &["seeds/decap_classify", "seeds/egress_classify"], &files, "xnet-common");
}
