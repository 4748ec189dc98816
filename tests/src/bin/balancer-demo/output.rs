//! What the demo prints: indented command output, log lines, sessions, continuity.

use super::*;

/// Prints command output indented.
pub(crate) fn print_indented(text: &str) {
    for line in text.lines() {
        println!("  {line}");
    }
}

/// Runs the CLI against the daemon's instance and prints its output.
pub(crate) fn show(d: &Daemon, args: &[&str]) -> Result<()> {
    let out = d.ctl(args)?;
    if !out.status.success() {
        bail!(
            "balancer {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!("demo: balancer {}", args.join(" "));
    print_indented(&String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// A daemon log line shortened for the demo: time of day, level, message (without the
/// module path).
pub(crate) fn short_log_line(line: &str) -> String {
    let plain = strip_ansi(line);
    let mut words = plain.split_whitespace();
    let (Some(ts), Some(level)) = (words.next(), words.next()) else {
        return plain;
    };
    let mut rest: Vec<&str> = words.collect();
    if rest
        .first()
        .is_some_and(|w| w.contains("::") && w.ends_with(':'))
    {
        rest.remove(0);
    }
    let time = ts
        .split_once('T')
        .map_or(ts, |(_, t)| t.trim_end_matches('Z'));
    let time = time.get(..12).unwrap_or(time);
    format!("{time} {level:<5} {}", rest.join(" "))
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// The session table while the load runs: session, primary, secondary, counter.
pub(crate) fn print_sessions(live: &[Option<Live>]) {
    println!("demo: sessions pinned to their primaries (after 1.5 s):");
    println!(
        "  {:<6} {:<18} {:<8} {:<10} {:>7}",
        "CLIENT", "SESSION", "PRIMARY", "SECONDARY", "COUNTER"
    );
    for (i, l) in live.iter().enumerate() {
        let Some(l) = l else {
            println!("  c{i:<5} (no answer yet)");
            continue;
        };
        println!(
            "  c{i:<5} {:<18} {:<8} {:<10} {:>7}",
            l.cookie.session,
            l.cookie.primary,
            l.cookie.secondary.as_deref().unwrap_or("NONE"),
            l.counter
        );
    }
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for l in live.iter().flatten() {
        *per.entry(l.cookie.primary.as_str()).or_default() += 1;
    }
    println!(
        "  sessions per primary: {}",
        per.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The same sessions before the kill and at the end: who served them and their counters.
pub(crate) fn print_continuity(
    before: &[Option<Live>],
    after: &[Option<Live>],
    victim: &str,
    logs: &[ClientLog],
    kill: Instant,
) {
    let taken: Vec<usize> = sessions_of(logs, victim, kill)
        .iter()
        .map(|l| l.client)
        .collect();
    println!("demo: the sessions before the kill and now:");
    println!(
        "  {:<6} {:<18} {:<20} {:<17} EVENTS AFTER THE KILL",
        "CLIENT", "SESSION", "SERVED BY", "COUNTER"
    );
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        let (Some(b), Some(a)) = (b, a) else {
            continue;
        };
        let mut events: BTreeMap<&str, usize> = BTreeMap::new();
        for ans in logs[i].answers.iter().filter(|x| x.at >= kill) {
            *events.entry(ans.event.as_str()).or_default() += 1;
        }
        let events = events
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mark = if taken.contains(&i) { " *" } else { "" };
        println!(
            "  c{i:<5} {:<18} {:<20} {:<17} {events}{mark}",
            a.cookie.session,
            format!("{} -> {}", b.cookie.primary, a.backend),
            format!("{} -> {}", b.counter, a.counter),
        );
    }
    println!("  (* a session of {victim}, taken over by its secondary)");
}
