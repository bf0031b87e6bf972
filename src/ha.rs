//! PLACEHOLDER until branch `ha` is merged (it owns this file): just the interface types the
//! forwarding code is written against. `ha_state` says Active, so nothing is forwarded.

use serde::{Deserialize, Serialize};

/// What the active node writes at `core/leader/<uuid>` through the barrier.
#[derive(Clone, Serialize, Deserialize)]
pub struct LeaderAdvertisement {
    pub uuid: String,
    pub api_addr: String,
    pub cluster_addr: String,
    pub identity: crate::forwarding::ForwardingIdentity,
    pub active_since: String,
}

pub enum HaState {
    Sealed,
    Active,
    Standby { leader: Option<std::sync::Arc<LeaderAdvertisement>> },
}

impl crate::core::Core {
    pub fn ha_state(&self) -> HaState {
        HaState::Active
    }
}
