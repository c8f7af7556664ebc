//! Handles of their own on the datapath's maps, for the flow reader and the
//! metrics endpoint, which run on the I/O thread while the enforcement loop
//! owns the `Ebpf` object. Each handle is a new file descriptor for the same
//! kernel map (looked up by the map's id), so no lock is shared with the
//! enforcement loop.

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    Ebpf,
};
use porin_common::datapath::{Counter, Ct4Key, CtClock, CtCount, CtKey, CtValue, DropReason};

use crate::{
    control::proto::{ConntrackStatus, EndpointConnections, MapFill},
    maps::{self, Holds, MapDef},
};

use porin_common::flow::lost;
pub use porin_common::flow::EventConfig;

use super::source::EventSource;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map `{0}` is missing from the eBPF object")]
    Missing(&'static str),
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map `{map}`: {source}")]
    Source {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A new handle on map `name` of `bpf`.
pub fn own(bpf: &Ebpf, name: &'static str) -> Result<Map, MapsError> {
    let data = match bpf.map(name).ok_or(MapsError::Missing(name))? {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::RingBuf(d)
        | Map::PerfEventArray(d) => d,
        _ => return Err(MapsError::Missing(name)),
    };
    let err = |source| MapsError::Map { map: name, source };
    let id = data.info().map_err(err)?.id();
    Map::from_map_data(MapData::from_id(id).map_err(err)?).map_err(err)
}

/// A new handle on registry entry `def`, of its types.
fn typed<K, V, T>(bpf: &Ebpf, def: MapDef<K, V>) -> Result<T, MapsError>
where
    T: Holds<K, V> + TryFrom<Map, Error = MapError>,
{
    T::try_from(own(bpf, def.name)?).map_err(|source| MapsError::Map {
        map: def.name,
        source,
    })
}

/// The flow-event maps.
pub struct EventMaps {
    /// The ring buffer or the perf buffers, whichever the object has.
    pub events: EventSource,
    pub config: Array<MapData, EventConfig>,
    pub lost: PerCpuArray<MapData, u64>,
}

impl EventMaps {
    pub fn open(bpf: &Ebpf) -> Result<Self, MapsError> {
        Ok(EventMaps {
            events: EventSource::new(own(bpf, maps::EVENTS.name)?).map_err(|source| {
                MapsError::Source {
                    map: maps::EVENTS.name,
                    source,
                }
            })?,
            config: typed(bpf, maps::EVENT_CONFIG)?,
            lost: typed(bpf, maps::LOST)?,
        })
    }

    /// Splits into the event source (for the reader) and the rest.
    pub fn split(self) -> (EventSource, EventControl) {
        (
            self.events,
            EventControl {
                config: self.config,
                lost: self.lost,
            },
        )
    }
}

/// Rate configuration and the lost-record counters.
pub struct EventControl {
    pub config: Array<MapData, EventConfig>,
    pub lost: PerCpuArray<MapData, u64>,
}

impl EventControl {
    /// Lets the datapath emit `per_second` events in total: each of the
    /// node's CPUs gets an equal share, with a burst of one second's share.
    pub fn set_rate(&mut self, per_second: u32) -> Result<(), MapsError> {
        let cpus = aya::util::nr_cpus().map(|n| n.max(1)).unwrap_or(1) as u64;
        self.set_cpu_rate((u64::from(per_second) / cpus).max(1), 1_000_000_000)
    }

    /// Each CPU may emit `per_cpu` events a second and save up `burst_ns`
    /// of credit.
    pub fn set_cpu_rate(&mut self, per_cpu: u64, burst_ns: u64) -> Result<(), MapsError> {
        let cost = 1_000_000_000 / per_cpu.max(1);
        self.config
            .set(
                0,
                EventConfig {
                    cost_ns: cost.max(1),
                    burst_ns: burst_ns.max(cost),
                },
                0,
            )
            .map_err(|source| MapsError::Map {
                map: maps::EVENT_CONFIG.name,
                source,
            })
    }

    /// Lost records (rate limited, ring full) the programs counted, summed
    /// over the CPUs. With perf buffers the kernel reports full buffers to
    /// the reader instead (`Counters::flow_events_perf_lost`), which
    /// `control::server::Ctx::lost` adds to the ring-full cause.
    pub fn lost(&self) -> [u64; 2] {
        let sum = |i| self.lost.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        [sum(lost::RATE_LIMITED), sum(lost::RING_FULL)]
    }
}

/// The counter maps and conntrack, read at scrape time.
pub struct CounterMaps {
    pub drops: PerCpuArray<MapData, Counter>,
    pub fwd: PerCpuArray<MapData, Counter>,
    /// IPv4 connections.
    pub ct4: HashMap<MapData, Ct4Key, CtValue>,
    /// IPv6 connections.
    pub ct6: HashMap<MapData, CtKey, CtValue>,
    /// Entries per endpoint and the quota.
    pub ct_counts: HashMap<MapData, u32, CtCount>,
    pub ct_clock: Array<MapData, CtClock>,
    /// Allowed HTTP requests by policy number.
    pub http_allowed: PerCpuArray<MapData, u64>,
}

impl CounterMaps {
    pub fn open(bpf: &Ebpf) -> Result<Self, MapsError> {
        Ok(CounterMaps {
            drops: typed(bpf, maps::DROPS)?,
            fwd: typed(bpf, maps::FORWARDED)?,
            ct4: typed(bpf, maps::CT4)?,
            ct6: typed(bpf, maps::CT6)?,
            ct_counts: typed(bpf, maps::CT_COUNTS)?,
            ct_clock: typed(bpf, maps::CT_CLOCK)?,
            http_allowed: typed(bpf, maps::HTTP_ALLOWED)?,
        })
    }

    /// Allowed HTTP requests of policies `1..=policies` (index `i` for
    /// policy `i`), summed over the CPUs; index 0 counts the policies past
    /// [`maps::HTTP_COUNTED_POLICIES`]. One lookup per policy.
    pub fn http_allowed(&self, policies: usize) -> Vec<u64> {
        let last = policies.min(maps::HTTP_COUNTED_POLICIES as usize - 1) as u32;
        (0..=last)
            .map(|i| {
                self.http_allowed
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The quotas, the flows they refused and each endpoint's entries
    /// (veths by name where they still exist, else `ifindex N`).
    pub fn conntrack_status(&self) -> ConntrackStatus {
        let refused = Self::sum(&self.drops, DropReason::ConntrackQuota as u32).packets;
        let http_refused = Self::sum(&self.drops, DropReason::HttpQuota as u32).packets;
        let clock = self.ct_clock.get(&0, 0).unwrap_or_default();
        let mut per_endpoint: Vec<EndpointConnections> = self
            .ct_counts
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, n)| n.entries > 0 || n.http > 0)
            .map(|(i, n)| EndpointConnections {
                veth: crate::datapath::veth_name(i),
                entries: n.entries,
                http: n.http,
            })
            .collect();
        per_endpoint.sort_by(|a, b| b.entries.cmp(&a.entries).then(a.veth.cmp(&b.veth)));
        ConntrackStatus {
            max_per_endpoint: clock.max_per_endpoint,
            max_http_per_endpoint: clock.max_http_per_endpoint,
            refused,
            http_refused,
            per_endpoint,
        }
    }

    /// `map[index]` summed over the CPUs.
    pub fn sum(map: &PerCpuArray<MapData, Counter>, index: u32) -> Counter {
        map.get(&index, 0)
            .map(|v| {
                v.iter().fold(Counter::default(), |a, c| Counter {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                })
            })
            .unwrap_or_default()
    }

    /// Fill of both conntrack maps (walks their keys: at most
    /// `max_entries` syscalls each).
    pub fn ct_fill(&self) -> [MapFill; 2] {
        let fill = |map: maps::MapSpec, entries: usize| MapFill {
            name: map.name.into(),
            entries: entries as u64,
            capacity: u64::from(map.max_entries),
        };
        [
            fill(
                maps::CT4.spec(),
                self.ct4.keys().filter(Result::is_ok).count(),
            ),
            fill(
                maps::CT6.spec(),
                self.ct6.keys().filter(Result::is_ok).count(),
            ),
        ]
    }
}
