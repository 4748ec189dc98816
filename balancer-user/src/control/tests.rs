//! The control logic over [`MemoryStore`]: slot allocation, write order, token
//! collisions, failover validation and the listings. No root, no kernel: every write is
//! checked against what the data plane relies on as it is made.

use std::net::SocketAddrV4;

use balancer_common::{
    backend_state, cookie::token_hash, health_state, syncookie::CookieSecret, Backend,
    BackendHealth, BackendStats, Counter, Failover, MAX_BACKENDS, MAX_SERVICES, SERVICE_F_COOKIE,
    SERVICE_F_SOURCE, SERVICE_PREFIX_SHIFT,
};

use super::{
    cookie_mode::CookieSettings,
    memory_store::{MemoryStore, Write},
    BackendSpec, Control,
};
use crate::{
    dataplane::MapStore,
    model::{BackendState, Persistence, ServiceAddr, Weight},
};

fn svc(s: &str) -> ServiceAddr {
    s.parse().unwrap()
}

fn ep(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn spec(addr: &str) -> BackendSpec {
    BackendSpec::new(ep(addr), Weight::DEFAULT)
}

fn with_token(addr: &str, token: &str) -> BackendSpec {
    BackendSpec {
        server_id: Some(token.into()),
        ..spec(addr)
    }
}

const NAT: &str = "198.18.0.10:80/tcp";
const COOKIE: &str = "198.18.0.20:80/tcp";

/// An empty instance with a NAT service and a cookie-mode service.
fn two_services() -> Control<MemoryStore> {
    let mut c = Control::new(MemoryStore::new());
    c.add_service(svc(NAT)).unwrap();
    c.add_service_with(svc(COOKIE), Some(CookieSettings::default()))
        .unwrap();
    c
}

/// Fails the test if the store saw a write the data plane must never see.
fn assert_no_violations(c: &Control<MemoryStore>) {
    assert_eq!(c.store().violations(), [] as [String; 0]);
}

fn ring_names(w: &Write, slot: u32) -> bool {
    matches!(w, Write::Ring { names, .. } if names.contains(&slot))
}

fn ring_without(w: &Write, service_id: u32, slot: u32) -> bool {
    matches!(w, Write::Ring { service_id: id, names } if *id == service_id && !names.contains(&slot))
}

fn backend_write(w: &Write, slot: u32, state: u8) -> bool {
    matches!(w, Write::Backend(s, b) if *s == slot && b.state == state)
}

fn error_of<T: std::fmt::Debug>(r: crate::error::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn backends_take_the_lowest_free_slot_and_removed_slots_are_reused() {
    let mut c = two_services();
    let slots: Vec<u32> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
        .iter()
        .map(|a| c.add_backend(svc(NAT), spec(a)).unwrap().slot)
        .collect();
    assert_eq!(slots, [0, 1, 2]);
    c.remove_backend(svc(NAT), ep("10.0.0.2:80")).unwrap();
    // Slots are shared by all services.
    let reused = c.add_backend(svc(COOKIE), spec("10.0.1.1:80")).unwrap();
    assert_eq!(reused.slot, 1);
    assert_eq!(
        c.add_backend(svc(NAT), spec("10.0.0.4:80")).unwrap().slot,
        3
    );
    assert_no_violations(&c);
}

#[test]
fn services_take_the_lowest_free_id_and_the_limit_is_refused() {
    let mut c = Control::new(MemoryStore::new());
    for i in 0..MAX_SERVICES {
        let info = c.add_service(svc(&format!("198.18.2.{i}:80/tcp"))).unwrap();
        assert_eq!(info.id, i);
    }
    c.store_mut().clear_writes();
    assert_eq!(
        error_of(c.add_service(svc("198.18.3.1:80/tcp"))),
        format!("no room for another service (limit {MAX_SERVICES})")
    );
    assert_eq!(c.store().writes(), []);
    c.remove_service(svc("198.18.2.7:80/tcp")).unwrap();
    assert_eq!(c.add_service(svc("198.18.3.1:80/tcp")).unwrap().id, 7);
    assert_no_violations(&c);
}

#[test]
fn the_backend_limit_is_refused_without_writing() {
    let mut c = two_services();
    // Every slot but the last taken by a backend of a service that is not listed.
    for slot in 0..MAX_BACKENDS - 1 {
        let b = Backend {
            addr: slot,
            port: 80,
            state: backend_state::UP,
            service: MAX_SERVICES + 1,
            weight: 1,
            ..Backend::default()
        };
        c.store_mut().set_backend(slot, b).unwrap();
    }
    let last = c.add_backend(svc(NAT), spec("10.0.0.1:80")).unwrap();
    assert_eq!(last.slot, MAX_BACKENDS - 1);
    c.store_mut().clear_writes();
    assert_eq!(
        error_of(c.add_backend(svc(NAT), spec("10.0.0.2:80"))),
        format!("no room for another backend (limit {MAX_BACKENDS} across all services)")
    );
    assert_eq!(c.store().writes(), []);
    assert_no_violations(&c);
}

#[test]
fn duplicates_and_unknown_names_are_refused() {
    let mut c = two_services();
    c.add_backend(svc(NAT), spec("10.0.0.1:80")).unwrap();
    c.store_mut().clear_writes();
    assert_eq!(
        error_of(c.add_service(svc(NAT))),
        format!("service {NAT} already exists")
    );
    assert_eq!(
        error_of(c.add_backend(svc(NAT), spec("10.0.0.1:80"))),
        format!("backend 10.0.0.1:80 already exists in service {NAT}")
    );
    assert_eq!(
        error_of(c.remove_backend(svc(NAT), ep("10.0.0.9:80"))),
        format!("backend 10.0.0.9:80 is not in service {NAT}")
    );
    assert_eq!(
        error_of(c.remove_service(svc("198.18.9.9:80/udp"))),
        "service 198.18.9.9:80/udp does not exist"
    );
    assert_eq!(
        error_of(c.backends(Some(svc("198.18.9.9:80/udp")))),
        "service 198.18.9.9:80/udp does not exist"
    );
    assert_eq!(
        error_of(c.add_service_with(svc("198.18.0.30:53/udp"), Some(CookieSettings::default()))),
        "invalid service '198.18.0.30:53/udp': cookie mode needs TCP (cookie name JSESSIONID)"
    );
    assert_eq!(c.store().writes(), []);
}

#[test]
fn an_up_backend_is_written_before_the_table_names_it() {
    let mut c = two_services();
    c.store_mut().clear_writes();
    let info = c.add_backend(svc(NAT), spec("10.0.0.1:80")).unwrap();
    let slot = info.slot;
    let zeroed = c.store().position("zeroing the counters", |w| {
        *w == Write::ZeroBackendStats(slot)
    });
    let written = c.store().position("of the backend", |w| {
        backend_write(w, slot, backend_state::UP)
    });
    let named = c
        .store()
        .position("naming the backend", |w| ring_names(w, slot));
    assert!(
        zeroed < written && written < named,
        "{:#?}",
        c.store().writes()
    );
    assert_eq!(info.table_share, 1.0);
    // Back up after a drain: the same order.
    c.set_backend_state(svc(NAT), ep("10.0.0.1:80"), BackendState::Draining)
        .unwrap();
    c.store_mut().clear_writes();
    c.set_backend_state(svc(NAT), ep("10.0.0.1:80"), BackendState::Up)
        .unwrap();
    let written = c.store().position("of the backend", |w| {
        backend_write(w, slot, backend_state::UP)
    });
    assert!(
        written
            < c.store()
                .position("naming the backend", |w| ring_names(w, slot))
    );
    assert_no_violations(&c);
}

#[test]
fn a_backend_leaving_leaves_the_table_before_its_slot_changes() {
    for (state, code) in [
        (BackendState::Draining, backend_state::DRAINING),
        (BackendState::Down, backend_state::DOWN),
    ] {
        let mut c = two_services();
        let a = c.add_backend(svc(NAT), spec("10.0.0.1:80")).unwrap().slot;
        let b = c.add_backend(svc(NAT), spec("10.0.0.2:80")).unwrap().slot;
        c.store_mut().clear_writes();
        let info = c
            .set_backend_state(svc(NAT), ep("10.0.0.1:80"), state)
            .unwrap();
        assert_eq!((info.state, info.table_share), (state, 0.0));
        let left = c
            .store()
            .position("dropping the backend", |w| ring_without(w, 0, a));
        let written = c
            .store()
            .position("of the state", |w| backend_write(w, a, code));
        assert!(left < written, "{state}: {:#?}", c.store().writes());
        let other = c.backends(Some(svc(NAT))).unwrap();
        assert_eq!(other.iter().find(|i| i.slot == b).unwrap().table_share, 1.0);
        assert_no_violations(&c);
    }
}

#[test]
fn a_removed_backend_leaves_the_table_before_its_slot_is_cleared() {
    let mut c = two_services();
    let slot = c
        .add_backend(svc(COOKIE), with_token("10.0.1.1:80", "app1"))
        .unwrap()
        .slot;
    c.add_backend(svc(COOKIE), with_token("10.0.1.2:80", "app2"))
        .unwrap();
    let record = BackendHealth {
        state: health_state::UP,
        checks: 3,
        ..BackendHealth::default()
    };
    c.write_health(slot, &record).unwrap();
    c.store_mut().clear_writes();
    c.remove_backend(svc(COOKIE), ep("10.0.1.1:80")).unwrap();
    let token = c.store().position(
        "removing the token",
        |w| matches!(w, Write::RemoveServerId(k) if k.token_hash == token_hash(b"app1")),
    );
    let left = c
        .store()
        .position("dropping the backend", |w| ring_without(w, 1, slot));
    let cleared = c.store().position("clearing the slot", |w| {
        *w == Write::Backend(slot, Backend::default())
    });
    let health = c.store().position("forgetting its health", |w| {
        *w == Write::Health(slot, BackendHealth::default())
    });
    assert!(token < left && left < cleared && cleared < health);
    assert_eq!(c.health_records().unwrap().get(&slot), None);
    let left: Vec<_> = c.backends(None).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].server_id.as_deref(), Some("app2"));
    assert_no_violations(&c);
}

#[test]
fn a_new_service_table_is_cleared_before_the_service_is_visible() {
    let mut c = Control::new(MemoryStore::new());
    c.add_service_with(svc(COOKIE), Some(CookieSettings::default()))
        .unwrap();
    let cleared = c.store().position(
        "clearing the table",
        |w| matches!(w, Write::Ring { service_id: 0, names } if names.is_empty()),
    );
    let config = c
        .store()
        .position("of the cookie settings", |w| *w == Write::CookieConfig(0));
    let visible = c
        .store()
        .position("of the service", |w| matches!(w, Write::InsertService(..)));
    assert!(cleared < visible && config < visible);
    assert_no_violations(&c);
}

#[test]
fn a_removed_service_is_hidden_before_its_table_and_slots_are_cleared() {
    let mut c = two_services();
    let slot = c.add_backend(svc(NAT), spec("10.0.0.1:80")).unwrap().slot;
    c.store_mut().clear_writes();
    c.remove_service(svc(NAT)).unwrap();
    let hidden = c.store().position("removing the service", |w| {
        matches!(w, Write::RemoveService(..))
    });
    let cleared = c
        .store()
        .position("clearing the table", |w| ring_without(w, 0, slot));
    let slot_cleared = c.store().position("clearing the slot", |w| {
        *w == Write::Backend(slot, Backend::default())
    });
    assert!(hidden < cleared && cleared < slot_cleared);
    assert_no_violations(&c);
}

#[test]
fn a_reused_service_id_starts_from_a_cleared_table() {
    let mut c = two_services();
    c.remove_service(svc(NAT)).unwrap();
    // Leftovers in the freed block (as a crash between two writes would leave them).
    c.store_mut()
        .update_ring(0, |old| vec![9; old.len()])
        .unwrap();
    c.store_mut().clear_writes();
    assert_eq!(c.add_service(svc("198.18.0.11:80/tcp")).unwrap().id, 0);
    assert!(matches!(
        c.store().writes(),
        [Write::Ring { service_id: 0, names }, Write::InsertService(..)] if names.is_empty()
    ));
    assert_no_violations(&c);
}

#[test]
fn the_store_sees_a_write_order_the_data_plane_must_not() {
    // The check itself: a slot emptied while the table still names it.
    let mut c = two_services();
    let slot = c.add_backend(svc(NAT), spec("10.0.0.1:80")).unwrap().slot;
    c.store_mut().set_backend(slot, Backend::default()).unwrap();
    assert_eq!(
        c.store().violations().len(),
        1,
        "{:?}",
        c.store().violations()
    );
}

#[test]
fn a_taken_server_id_is_refused_without_writing() {
    let mut c = two_services();
    c.add_backend(svc(COOKIE), with_token("10.0.1.1:80", "app1"))
        .unwrap();
    c.store_mut().clear_writes();
    assert_eq!(
        error_of(c.add_backend(svc(COOKIE), with_token("10.0.1.2:80", "app1"))),
        format!(
            "invalid server id 'app1': is already used by another backend of this service \
             ({COOKIE})"
        )
    );
    assert_eq!(c.store().writes(), []);
    // The same token in another cookie service is fine.
    c.add_service_with(svc("198.18.0.21:80/tcp"), Some(CookieSettings::default()))
        .unwrap();
    c.add_backend(svc("198.18.0.21:80/tcp"), with_token("10.0.1.2:80", "app1"))
        .unwrap();
    assert_no_violations(&c);
}

#[test]
fn a_token_hashing_like_a_taken_one_is_refused_without_writing() {
    // Equal length, equal data-plane hash (found as tests/src/daemon.rs's
    // colliding_tokens finds them).
    let (a, b) = ("collideAsuffix00", "0000BBzBH2oGu3Ue");
    assert_eq!(token_hash(a.as_bytes()), token_hash(b.as_bytes()));
    let mut c = two_services();
    c.add_backend(svc(COOKIE), with_token("10.0.1.1:80", a))
        .unwrap();
    c.store_mut().clear_writes();
    assert_eq!(
        error_of(c.add_backend(svc(COOKIE), with_token("10.0.1.2:80", b))),
        format!(
            "invalid server id '{b}': hashes like '{a}', already used in this service; \
             choose another token ({COOKIE})"
        )
    );
    assert_eq!(c.store().writes(), []);
    assert_eq!(c.backends(Some(svc(COOKIE))).unwrap().len(), 1);
}

#[test]
fn server_ids_need_a_cookie_service_and_a_valid_token() {
    let mut c = two_services();
    c.store_mut().clear_writes();
    assert_eq!(
        error_of(c.add_backend(svc(NAT), with_token("10.0.0.1:80", "app1"))),
        format!("invalid server id 'app1': service {NAT} is not in cookie mode")
    );
    let e = error_of(c.add_backend(svc(COOKIE), with_token("10.0.1.1:80", "a!b")));
    assert!(
        e.starts_with("invalid server id 'a!b': use 1-64 visible ASCII"),
        "{e}"
    );
    assert_eq!(c.store().writes(), []);
}

#[test]
fn failover_is_validated_listed_and_forgotten_with_its_backends() {
    let mut c = two_services();
    let a = c
        .add_backend(svc(COOKIE), with_token("10.0.1.1:80", "app1"))
        .unwrap()
        .slot;
    let b = c
        .add_backend(svc(COOKIE), with_token("10.0.1.2:80", "app2"))
        .unwrap()
        .slot;
    c.add_backend(svc(NAT), spec("10.0.0.1:80")).unwrap();
    c.store_mut().clear_writes();
    assert_eq!(
        error_of(c.set_failover(svc(COOKIE), ep("10.0.1.1:80"), Some(ep("10.0.1.1:80")))),
        "invalid failover '10.0.1.1:80': a backend cannot replace itself"
    );
    assert_eq!(
        error_of(c.set_failover(svc(NAT), ep("10.0.0.1:80"), None)),
        format!("invalid service '{NAT}': failover applies to cookie-mode services")
    );
    assert_eq!(
        error_of(c.set_failover(svc(COOKIE), ep("10.0.1.1:80"), Some(ep("10.0.1.9:80")))),
        format!("backend 10.0.1.9:80 is not in service {COOKIE}")
    );
    assert_eq!(c.store().writes(), []);

    let info = c
        .set_failover(svc(COOKIE), ep("10.0.1.1:80"), Some(ep("10.0.1.2:80")))
        .unwrap();
    assert_eq!(info.failover_to, Some(ep("10.0.1.2:80")));
    assert_eq!(info.server_id.as_deref(), Some("app1"));
    assert_eq!(
        c.store().writes(),
        [Write::Failover(
            a,
            Failover {
                replacement: b,
                active: 1
            }
        )]
    );
    // The replacement goes away: the rewrite naming it goes with it.
    c.remove_backend(svc(COOKIE), ep("10.0.1.2:80")).unwrap();
    assert_eq!(c.store().failover(a).unwrap(), Failover::default());
    let left = c.backends(Some(svc(COOKIE))).unwrap();
    assert_eq!(left[0].failover_to, None);
    assert_no_violations(&c);
}

#[test]
fn a_new_backend_in_a_slot_does_not_inherit_its_failover_entry() {
    let mut c = two_services();
    c.add_backend(svc(COOKIE), with_token("10.0.1.1:80", "app1"))
        .unwrap();
    // A stale entry for slot 1 (as a crash could leave).
    let stale = Failover {
        replacement: 0,
        active: 1,
    };
    c.store_mut().set_failover(1, stale).unwrap();
    let info = c
        .add_backend(svc(COOKIE), with_token("10.0.1.2:80", "app2"))
        .unwrap();
    assert_eq!((info.slot, info.failover_to), (1, None));
    assert_eq!(c.store().failover(1).unwrap(), Failover::default());
}

#[test]
fn listings_count_and_describe_what_the_maps_hold() {
    let mut c = two_services();
    c.add_backend(
        svc(NAT),
        BackendSpec::new(ep("10.0.0.1:80"), Weight::new(300).unwrap()),
    )
    .unwrap();
    c.add_backend(svc(NAT), spec("10.0.0.2:80")).unwrap();
    c.add_backend(svc(COOKIE), with_token("10.0.1.1:80", "app1"))
        .unwrap();
    c.set_backend_state(svc(NAT), ep("10.0.0.2:80"), BackendState::Down)
        .unwrap();
    let w = c
        .set_backend_weight(svc(NAT), ep("10.0.0.2:80"), Weight::new(7).unwrap())
        .unwrap();
    assert_eq!((w.weight.get(), w.state), (7, BackendState::Down));

    let services = c.services().unwrap();
    let summary: Vec<_> = services
        .iter()
        .map(|s| (s.service.to_string(), s.backends, s.active_backends, s.mode))
        .collect();
    assert_eq!(
        summary,
        [
            (NAT.to_string(), 2, 1, "nat"),
            (COOKIE.to_string(), 1, 1, "cookie")
        ]
    );
    assert_eq!(services[1].cookie, Some(CookieSettings::default()));

    let nat = c.backends(Some(svc(NAT))).unwrap();
    assert_eq!(nat.len(), 2);
    assert_eq!(nat[0].table_share, 1.0);
    assert_eq!(nat[1].table_share, 0.0);
    assert_eq!(c.backends(None).unwrap().len(), 3);

    let names = c.slot_names().unwrap();
    assert_eq!(
        names.get(&1),
        Some(&(NAT.to_string(), ep("10.0.0.2:80"), "down"))
    );
    assert_eq!(names.get(&2).unwrap().0, COOKIE);
}

#[test]
fn health_records_and_counters_are_read_per_slot() {
    let mut c = two_services();
    let slot = c.add_backend(svc(NAT), spec("10.0.0.1:80")).unwrap().slot;
    assert_eq!(c.health_record(slot).unwrap().state, health_state::UNKNOWN);
    assert!(c.backends(None).unwrap()[0].health.is_none());
    let record = BackendHealth {
        state: health_state::DOWN,
        checks: 4,
        failures: 2,
        ..BackendHealth::default()
    };
    c.write_health(slot, &record).unwrap();
    assert_eq!(c.health_record(slot).unwrap(), record);
    assert_eq!(c.health_records().unwrap().len(), 1);
    assert_eq!(
        c.backends(None).unwrap()[0].health.as_ref().unwrap().health,
        "down"
    );

    c.store_mut().global_counters[Counter::ALL[0] as usize] = 5;
    c.store_mut().set_backend_stats(
        slot,
        BackendStats {
            packets_to: 9,
            ..BackendStats::default()
        },
    );
    let stats = c.stats().unwrap();
    assert_eq!(stats.get(Counter::ALL[0]), 5);
    assert_eq!(stats.backends.len(), 1);
    assert_eq!(stats.backends[0].counters.packets_to, 9);
    assert_eq!(stats.backends[0].health.as_ref().unwrap().checks, 4);
    // A new backend in the slot starts from zero.
    c.remove_backend(svc(NAT), ep("10.0.0.1:80")).unwrap();
    c.add_backend(svc(NAT), spec("10.0.0.2:80")).unwrap();
    assert_eq!(c.stats().unwrap().backends[0].counters.packets_to, 0);
    assert_eq!(c.health_records().unwrap().len(), 0);
}

#[test]
fn rotating_the_syncookie_secret_keeps_the_previous_one() {
    let mut c = Control::new(MemoryStore::new());
    assert!(!c.has_syncookie_secret().unwrap());
    let (one, two) = (CookieSecret { k0: 1, k1: 2 }, CookieSecret { k0: 3, k1: 4 });
    c.rotate_syncookie_secret(one).unwrap();
    c.rotate_syncookie_secret(two).unwrap();
    assert!(c.has_syncookie_secret().unwrap());
    let keys = c.store().syncookie_keys().unwrap();
    assert_eq!((keys.current, keys.previous), (two, one));
}

#[test]
fn persistence_is_kept_in_the_service_flags_beside_cookie_mode() {
    let mut c = two_services();
    let source24 = "source/24".parse::<Persistence>().unwrap();
    let persistent = svc("198.18.0.30:443/tcp");
    let info = c
        .add_service_opts(persistent, None, Persistence::Source { prefix: 32 })
        .unwrap();
    assert_eq!(info.persistence, Persistence::Source { prefix: 32 });
    let flags = |c: &Control<MemoryStore>, s: &str| {
        c.store().service(&svc(s).key()).unwrap().unwrap().flags
    };
    assert_eq!(
        flags(&c, "198.18.0.30:443/tcp"),
        SERVICE_F_SOURCE | 32 << SERVICE_PREFIX_SHIFT
    );
    // Changed in place: same id, the cookie flag untouched.
    let before = c.store().service(&svc(COOKIE).key()).unwrap().unwrap();
    c.set_persistence(svc(COOKIE), source24).unwrap();
    let after = c.store().service(&svc(COOKIE).key()).unwrap().unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(after.flags, SERVICE_F_COOKIE | source24.flags());
    let listed: Vec<(String, Persistence)> = c
        .services()
        .unwrap()
        .into_iter()
        .map(|s| (s.service.to_string(), s.persistence))
        .collect();
    assert!(
        listed.contains(&(COOKIE.to_string(), source24)),
        "{listed:?}"
    );
    assert!(
        listed.contains(&(NAT.to_string(), Persistence::None)),
        "{listed:?}"
    );
    c.set_persistence(svc(COOKIE), Persistence::None).unwrap();
    assert_eq!(flags(&c, COOKIE), SERVICE_F_COOKIE);
    let e = c
        .set_persistence(svc("198.18.0.99:80/tcp"), source24)
        .unwrap_err();
    assert_eq!(e.to_string(), "service 198.18.0.99:80/tcp does not exist");
    assert_no_violations(&c);
}
