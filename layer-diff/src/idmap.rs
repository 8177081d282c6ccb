//! Uid/gid mapping between a container's ids and the host's, for rootless
//! unpack and repack (the `/proc/PID/uid_map` shape).

/// One contiguous range: container ids `container..container+size` are host
/// ids `host..host+size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the container.
    pub container: u32,
    /// First id on the host.
    pub host: u32,
    /// Number of ids.
    pub size: u32,
}

impl IdRange {
    /// A range of `size` ids from `container` to `host`.
    pub fn new(container: u32, host: u32, size: u32) -> IdRange {
        IdRange { container, host, size }
    }
}

/// Uid and gid ranges. Ids that no range covers are kept as they are.
///
/// ```
/// use layer_diff::{IdMap, IdRange};
/// let map = IdMap::new(vec![IdRange::new(0, 100_000, 65_536)], vec![IdRange::new(0, 100_000, 65_536)]);
/// assert_eq!(map.to_host_uid(0), 100_000);
/// assert_eq!(map.to_container_gid(100_005), 5);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    /// Uid ranges.
    pub uids: Vec<IdRange>,
    /// Gid ranges.
    pub gids: Vec<IdRange>,
}

fn map(ranges: &[IdRange], id: u32, to_host: bool) -> u32 {
    for r in ranges {
        let (from, to) = if to_host { (r.container, r.host) } else { (r.host, r.container) };
        if id >= from && u64::from(id) < u64::from(from) + u64::from(r.size) {
            return to + (id - from);
        }
    }
    id
}

impl IdMap {
    /// A map of the given uid and gid ranges.
    pub fn new(uids: Vec<IdRange>, gids: Vec<IdRange>) -> IdMap {
        IdMap { uids, gids }
    }

    /// The host uid of a container uid.
    pub fn to_host_uid(&self, id: u32) -> u32 {
        map(&self.uids, id, true)
    }

    /// The host gid of a container gid.
    pub fn to_host_gid(&self, id: u32) -> u32 {
        map(&self.gids, id, true)
    }

    /// The container uid of a host uid.
    pub fn to_container_uid(&self, id: u32) -> u32 {
        map(&self.uids, id, false)
    }

    /// The container gid of a host gid.
    pub fn to_container_gid(&self, id: u32) -> u32 {
        map(&self.gids, id, false)
    }
}
