//! Group membership as the daemon runs it: the member table fed by the listener, and
//! our own host messages to the peer balancers.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use tokio::{net::UdpSocket, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    daemon::config::GroupSettings,
    daemon::group::{self, GroupKey, HostMessage, MemberSettings, MemberTable, Role},
};

/// Group membership: the shared table, the listener feeding it and the sender of our
/// own host messages.
pub(super) struct Group {
    pub table: Arc<Mutex<MemberTable>>,
    listener: JoinHandle<()>,
    sender: Option<JoinHandle<()>>,
}

impl Drop for Group {
    fn drop(&mut self) {
        self.listener.abort();
        if let Some(s) = &self.sender {
            s.abort();
        }
    }
}

impl Group {
    pub fn start(settings: &GroupSettings, key: GroupKey, socket: UdpSocket) -> Group {
        let table = Arc::new(Mutex::new(MemberTable::new(
            key.clone(),
            member_settings(settings),
        )));
        let listener = tokio::spawn(group::run_listener(Arc::new(socket), table.clone()));
        info!(listen = %settings.listen, peers = ?settings.peers, "group membership");
        Group {
            table,
            listener,
            sender: spawn_sender(settings, key),
        }
    }

    /// New settings on the same address: the listener and the members stay.
    pub fn reconfigure(&mut self, settings: &GroupSettings, key: GroupKey) {
        if let Ok(mut t) = self.table.lock() {
            t.reconfigure(key.clone(), member_settings(settings));
        }
        if let Some(s) = self.sender.take() {
            s.abort();
        }
        self.sender = spawn_sender(settings, key);
        info!(listen = %settings.listen, peers = ?settings.peers, "group membership reconfigured");
    }
}

fn member_settings(settings: &GroupSettings) -> MemberSettings {
    MemberSettings {
        limit: settings.member_timeout,
        ..MemberSettings::default()
    }
}

/// Sends our own host messages to the peer balancers, if there are any.
fn spawn_sender(settings: &GroupSettings, key: GroupKey) -> Option<JoinHandle<()>> {
    if settings.peers.is_empty() {
        return None;
    }
    let name = settings.name.clone().unwrap_or_else(group::hostname);
    let peers = settings.peers.clone();
    let interval = settings.interval;
    Some(tokio::spawn(async move {
        let socket = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
            Ok(s) => s,
            Err(e) => {
                warn!("group: cannot open a socket to send host messages: {e}");
                return;
            }
        };
        let build = move || {
            let interfaces = group::local_interfaces();
            let mut msg = HostMessage {
                name: name.clone(),
                addr: interfaces.first().map_or(Ipv4Addr::LOCALHOST, |i| i.ip),
                interfaces,
                load: group::load_average(),
                timestamp_ms: 0,
                seq: 0,
                role: Role::Balancer,
                server_id: None,
                secondary: None,
            };
            msg.truncate_to_fit();
            msg
        };
        group::run_sender(socket, peers, key, interval, build).await;
    }))
}
