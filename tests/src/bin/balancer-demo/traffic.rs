//! Requests through the NAT service.

use super::*;

/// Sends `n` GET / requests to the NAT service from the client, a fresh connection each.
pub(crate) fn nat_requests(
    t: &Topology,
    n: usize,
    outcome: &mut Outcome,
) -> Result<BTreeMap<String, usize>> {
    let (answered, errors) = t
        .client
        .run(move || {
            let mut answered: BTreeMap<String, usize> = BTreeMap::new();
            let mut errors = Vec::new();
            for _ in 0..n {
                if STOP.load(Ordering::SeqCst) {
                    break;
                }
                match http::get(nat_vip(), "/") {
                    Ok(r) if r.status == 200 => *answered.entry(r.text()).or_default() += 1,
                    Ok(r) => errors.push(format!("HTTP status {}", r.status)),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            (answered, errors)
        })
        .context("running the NAT client")?;
    let sent: usize = answered.values().sum::<usize>() + errors.len();
    outcome.nat_sent += sent;
    for (k, v) in &answered {
        *outcome.nat_answered.entry(k.clone()).or_default() += v;
    }
    for b in &t.backends {
        let count = answered.get(&b.name).copied().unwrap_or(0);
        println!(
            "  {:<4} {:<18} {count:>6}  {:>5.1}%",
            b.name,
            format!("{}:{NAT_BACKEND_PORT}", b.addr),
            100.0 * count as f64 / sent.max(1) as f64
        );
    }
    for (name, count) in &answered {
        if t.backend_index(name).is_none() {
            println!("  unexpected answer {name:?}: {count}");
        }
    }
    if !errors.is_empty() {
        println!("  {} failed requests, first ones:", errors.len());
        for e in errors.iter().take(5) {
            println!("    {e}");
        }
    }
    Ok(answered)
}
