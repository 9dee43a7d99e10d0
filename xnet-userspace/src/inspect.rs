//! Reading the pinned datapath state, for the CLI and metrics. Works while no agent runs.

use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, PerCpuArray};
use serde::Serialize;
use xnet_common::{
    maps::{self, Counter},
    stats::{self, Direction, Outcome},
};

#[derive(Debug, thiserror::Error)]
#[error("cannot read pinned map {path}: {detail}; is an xnet datapath set up with this --pin-dir?")]
pub struct InspectError {
    pub path: PathBuf,
    pub detail: String,
}

/// One counter, summed over CPUs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CounterRow {
    pub direction: &'static str,
    pub outcome: &'static str,
    /// The outcome's number (drop reasons are 128 and up; numbers are never reused).
    pub code: u32,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// Every counter of the datapath pinned under `pin_dir`.
pub fn read_counters(pin_dir: &Path) -> Result<Vec<CounterRow>, InspectError> {
    let path = pin_dir.join(maps::STATS);
    let err = |detail: String| InspectError { path: path.clone(), detail };
    let data = MapData::from_pin(&path).map_err(|e| err(e.to_string()))?;
    let map = Map::from_map_data(data).map_err(|e| err(e.to_string()))?;
    let array: PerCpuArray<MapData, Counter> = PerCpuArray::try_from(map).map_err(|e| err(e.to_string()))?;
    let mut rows = Vec::new();
    for direction in Direction::ALL {
        for outcome in Outcome::ALL.into_iter().filter(|o| o.applies_to(direction)) {
            let per_cpu = array.get(&stats::index(direction, outcome), 0).map_err(|e| err(e.to_string()))?;
            let (packets, bytes) = per_cpu.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            rows.push(CounterRow {
                direction: direction.name(),
                outcome: outcome.name(),
                code: outcome as u32,
                drop: outcome.is_drop(),
                packets,
                bytes,
            });
        }
    }
    Ok(rows)
}
