//! The checks every privileged test, tool and benchmark part starts with. The rest of the
//! harness lives beside this module, one concern each (see tests/README.md for the map):
//! [`crate::netns`] and [`crate::topology`] (namespaces, the address plan, the
//! balancer's instance), [`crate::daemon`] (the daemon runner), [`crate::http`] (the HTTP
//! client), [`crate::rawsock`] (packet sockets) and [`crate::attack`] (packet builders).

pub mod root;
