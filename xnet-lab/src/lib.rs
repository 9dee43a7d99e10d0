//! The xnet lab: simulated hosts in network namespaces with real agents, shared by the integration
//! tests, the demo and the benchmark.

pub mod bird;
pub mod cni;
pub mod decoder;
pub mod docker;
pub mod etcd;
pub mod fixture;
pub mod frr;
pub mod lab;
pub mod netns;
pub mod progcost;
pub mod scale;
pub mod stats;
pub mod targets;
pub mod traffic;
