//! The `/api/metrics` document as readable text: the window, the core
//! queries (room messages, user history, active users, the user's rooms),
//! the analytics (totals, type mix, rates, top users and rooms,
//! participation, the per-minute shape), the live fleet (servers,
//! consumers, queue depths, the database pool) and the query timings.
//! A part the document could not have is printed as its error, in place.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset};

use crate::metrics::document::{
    Analytics, ConsumerSnapshot, CoreQueries, Database, Document, Live, MessageList, Part, Queues,
    Series, ServerSnapshot, Window,
};
use crate::metrics::text::{
    clean, count, id, ms, opt, percent, real, sparkline, Align, Table, LINE_WIDTH,
};

/// Indent of a section's lines, and of a table under a heading.
const IN: &str = "  ";
const IN2: &str = "    ";

/// Columns of a sparkline: one per bucket up to this, averaged beyond.
const SPARK_WIDTH: usize = 60;

/// How the document is shown.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Message lines per message list (the document may hold more).
    pub lines: usize,
}

/// The whole document as text.
pub fn render(doc: &Document, options: Options) -> String {
    let mut s = String::new();
    let window = doc.window.ok();
    let _ = writeln!(s, "ChatFlow metrics  window {}", window_text(&doc.window));
    let mut tail = Vec::new();
    if let Some(g) = &doc.generated_at {
        tail.push(format!("generated {}", clean(g)));
    }
    if let Some(t) = doc.total_ms {
        tail.push(format!("in {t:.1} ms"));
    }
    if !tail.is_empty() {
        let _ = writeln!(s, "{IN}{}", tail.join(" "));
    }

    s.push_str("\nCore queries\n");
    match &doc.core_queries {
        Part::Ok(core) => core_queries(&mut s, core, options),
        other => failed_line(&mut s, IN, "core queries", other),
    }

    s.push_str("\nAnalytics\n");
    match &doc.analytics {
        Part::Ok(a) => analytics(&mut s, a, window),
        other => failed_line(&mut s, IN, "analytics", other),
    }

    s.push_str("\nLive\n");
    match &doc.live {
        Part::Ok(live) => live_stats(&mut s, live),
        other => failed_line(&mut s, IN, "live stats", other),
    }

    match &doc.timings_ms {
        Part::Ok(t) if !t.is_empty() => {
            let list: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{} {v:.2}", clean(k)))
                .collect();
            s.push('\n');
            wrapped(&mut s, "timings (ms)  ", &list);
        }
        Part::Ok(_) | Part::Missing => {}
        other => failed_line(&mut s, "\n", "timings", other),
    }
    s
}

/// `items` joined by `, ` after `first`, wrapped at [`LINE_WIDTH`] with
/// continuation lines indented under the first item.
fn wrapped(s: &mut String, first: &str, items: &[String]) {
    let indent = " ".repeat(first.chars().count());
    let mut line = first.to_string();
    for (i, item) in items.iter().enumerate() {
        let piece = if i + 1 < items.len() {
            format!("{item},")
        } else {
            item.clone()
        };
        if i > 0 && line.chars().count() + 1 + piece.chars().count() > LINE_WIDTH {
            let _ = writeln!(s, "{line}");
            line = format!("{indent}{piece}");
        } else {
            if i > 0 {
                line.push(' ');
            }
            line.push_str(&piece);
        }
    }
    let _ = writeln!(s, "{line}");
}

/// `start → end` of a window part (`…` for an open side).
fn window_text(w: &Part<Window>) -> String {
    match w {
        Part::Ok(w) => format!(
            "{} → {}",
            w.start.as_deref().map_or("…".into(), clean),
            w.end.as_deref().map_or("…".into(), clean)
        ),
        other => other.why_not().unwrap_or_default(),
    }
}

/// `{indent}{what}: {why}` for a part without data.
fn failed_line<T>(s: &mut String, indent: &str, what: &str, part: &Part<T>) {
    let why = part.why_not().unwrap_or_default();
    let _ = writeln!(s, "{indent}{what}: {}", clean(&why));
}

fn core_queries(s: &mut String, core: &CoreQueries, options: Options) {
    match &core.room_messages {
        Part::Ok(list) => message_list(s, list, ListKind::Room, options),
        other => failed_line(s, IN, "room messages", other),
    }
    match &core.user_messages {
        Part::Ok(list) => message_list(s, list, ListKind::User, options),
        other => failed_line(s, IN, "user history", other),
    }
    match &core.active_users {
        Part::Ok(n) => {
            let _ = writeln!(s, "{IN}active users  {}", count(Some(*n)));
        }
        other => failed_line(s, IN, "active users", other),
    }
    match &core.user_rooms {
        Part::Ok(ur) => {
            let _ = writeln!(s, "{IN}user {} rooms: {}", id(ur.user_id), ur.rooms.len());
            let mut t = Table::new(&[
                ("room", Align::Right),
                ("messages", Align::Right),
                ("last activity", Align::Left),
            ]);
            for r in &ur.rooms {
                t.row(vec![
                    id(r.room_id),
                    count(r.messages),
                    opt(r.last_activity.as_deref()),
                ]);
            }
            if !t.is_empty() {
                t.write(s, IN2);
            }
        }
        other => failed_line(s, IN, "user rooms", other),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Room,
    User,
}

/// A message list: heading, then the newest `options.lines` messages.
fn message_list(s: &mut String, list: &MessageList, kind: ListKind, options: Options) {
    let (what, which) = match kind {
        ListKind::Room => ("room", list.room_id),
        ListKind::User => ("user", list.user_id),
    };
    let held = list.count.unwrap_or(list.messages.len() as u64);
    let shown = list.messages.len().min(options.lines);
    let _ = write!(
        s,
        "{IN}{what} {} {}",
        id(which),
        if kind == ListKind::Room {
            "messages"
        } else {
            "history"
        }
    );
    if let Some(by) = &list.chosen_by {
        let _ = write!(s, " ({})", clean(by));
    }
    let _ = writeln!(s, ": {} in the document, newest first", count(Some(held)));
    if shown == 0 {
        return;
    }
    let second = match kind {
        ListKind::Room => "user",
        ListKind::User => "room",
    };
    let mut t = Table::new(&[
        ("time", Align::Left),
        (second, Align::Left),
        ("type", Align::Left),
        ("text", Align::Left),
    ]);
    let messages = &list.messages[..shown];
    let times = short_times(messages.iter().map(|m| m.server_timestamp.as_deref()));
    for (m, time) in messages.iter().zip(times) {
        let who = match kind {
            ListKind::Room => m
                .username
                .clone()
                .unwrap_or_else(|| format!("#{}", id(m.user_id))),
            ListKind::User => id(m.room_id),
        };
        t.row(vec![
            time,
            who,
            opt(m.message_type.as_deref()),
            opt(m.message.as_deref()),
        ]);
    }
    t.write_within(s, IN2, LINE_WIDTH);
    let more = list.messages.len() - shown;
    if more > 0 {
        let _ = writeln!(
            s,
            "{IN2}… {more} more in the document (--lines N, or --json)"
        );
    }
}

/// Timestamps as `HH:MM:SS.mmm` when they all share one UTC date (the
/// usual case), else `YYYY-MM-DD HH:MM:SS.mmm`; anything unparsable as it came.
fn short_times<'a>(times: impl Iterator<Item = Option<&'a str>>) -> Vec<String> {
    let times: Vec<Option<&str>> = times.collect();
    let date = |t: &str| t.split_once('T').map(|(d, _)| d.to_string());
    let mut dates = times.iter().flatten().filter_map(|t| date(t));
    let first = dates.next();
    let one_day = first.is_some() && dates.all(|d| Some(&d) == first.as_ref());
    times
        .iter()
        .map(|t| match t.and_then(|t| t.split_once('T')) {
            Some((d, rest)) => {
                let clock = rest.trim_end_matches('Z');
                if one_day {
                    clean(clock)
                } else {
                    clean(&format!("{d} {clock}"))
                }
            }
            None => opt(*t),
        })
        .collect()
}

fn analytics(s: &mut String, a: &Analytics, window: Option<&Window>) {
    let total = a.total_messages.unwrap_or(0);
    let _ = writeln!(
        s,
        "{IN}messages      {} stored, {} msgs/s, {} active users",
        count(a.total_messages),
        real(a.messages_per_second),
        count(a.active_users)
    );
    let types: Vec<String> = a
        .message_types
        .iter()
        .map(|(k, v)| {
            format!(
                "{} {} ({})",
                clean(k),
                count(Some(*v)),
                percent(Some(*v), total)
            )
        })
        .collect();
    if !types.is_empty() {
        let _ = writeln!(s, "{IN}types         {}", types.join(", "));
    }
    // The window the series are clipped to: the analytics' own, else the document's.
    let window = a.window.ok().or(window);
    match &a.series {
        Part::Ok(set) => {
            let mut any = false;
            for (name, series) in [
                ("per second", &set.per_second),
                ("per minute", &set.per_minute),
                ("per hour", &set.per_hour),
            ] {
                if let Some(series) = series {
                    series_lines(s, name, series, window);
                    any = true;
                }
            }
            if !any {
                let _ = writeln!(s, "{IN}series        none in the document");
            }
        }
        other => failed_line(s, IN, "series", other),
    }

    if let Some(why) = &a.per_user_omitted {
        let _ = writeln!(s, "{IN}top users and participation: {}", clean(why));
    }
    if let Some(top_users) = &a.top_users {
        let _ = writeln!(s, "{IN}top users");
        let mut t = Table::new(&[
            ("user", Align::Right),
            ("messages", Align::Right),
            ("share", Align::Right),
            ("rooms", Align::Right),
        ]);
        for u in top_users {
            t.row(vec![
                id(u.user_id),
                count(u.messages),
                percent(u.messages, total),
                count(u.rooms),
            ]);
        }
        write_or_none(s, &t);
    }
    let _ = writeln!(s, "{IN}top rooms");
    let mut t = Table::new(&[
        ("room", Align::Right),
        ("messages", Align::Right),
        ("share", Align::Right),
    ]);
    for r in &a.top_rooms {
        t.row(vec![
            id(r.room_id),
            count(r.messages),
            percent(r.messages, total),
        ]);
    }
    write_or_none(s, &t);

    match &a.participation {
        Part::Ok(p) => {
            let users: u64 = p.messages_per_user.iter().filter_map(|b| b.users).sum();
            let _ = writeln!(s, "{IN}messages per user");
            let mut t = Table::new(&[
                ("messages", Align::Right),
                ("users", Align::Right),
                ("share", Align::Right),
            ]);
            for b in &p.messages_per_user {
                let range = match (b.min, b.max) {
                    (Some(lo), Some(hi)) if lo == hi => count(Some(lo)),
                    (lo, hi) => format!("{}-{}", count(lo), count(hi)),
                };
                t.row(vec![range, count(b.users), percent(b.users, users)]);
            }
            write_or_none(s, &t);
            let users: u64 = p.rooms_per_user.iter().filter_map(|b| b.users).sum();
            let _ = writeln!(s, "{IN}rooms per user");
            let mut t = Table::new(&[
                ("rooms", Align::Right),
                ("users", Align::Right),
                ("share", Align::Right),
            ]);
            for b in &p.rooms_per_user {
                t.row(vec![
                    count(b.rooms),
                    count(b.users),
                    percent(b.users, users),
                ]);
            }
            write_or_none(s, &t);
        }
        // Left out on purpose: said above.
        Part::Missing if a.per_user_omitted.is_some() => {}
        other => failed_line(s, IN, "participation", other),
    }
}

fn write_or_none(s: &mut String, t: &Table) {
    if t.is_empty() {
        let _ = writeln!(s, "{IN2}(none)");
    } else {
        t.write(s, IN2);
    }
}

fn parse_time(t: Option<&str>) -> Option<DateTime<FixedOffset>> {
    t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
}

/// One series: bucket count, min/avg/max over its whole buckets (a first
/// or last bucket clipped by the window would drag the minimum down), and
/// a sparkline of all of them.
fn series_lines(s: &mut String, name: &str, series: &Series, window: Option<&Window>) {
    let counts = &series.counts;
    let step = series.step_seconds.unwrap_or(0);
    let start = parse_time(series.start.as_deref());
    let (w_start, w_end) = (
        parse_time(window.and_then(|w| w.start.as_deref())),
        parse_time(window.and_then(|w| w.end.as_deref())),
    );
    let first_partial = matches!((start, w_start), (Some(s0), Some(ws)) if ws > s0);
    let last_partial = match (start, w_end) {
        (Some(s0), Some(we)) => {
            let span = chrono::Duration::seconds((step * counts.len() as u64) as i64);
            we < s0 + span
        }
        _ => false,
    };
    let lo = usize::from(first_partial);
    let hi = counts.len().saturating_sub(usize::from(last_partial));
    let whole = if lo < hi {
        &counts[lo..hi]
    } else {
        &counts[..]
    };
    let _ = write!(
        s,
        "{IN}{name:<13} {} bucket{} of {} s",
        counts.len(),
        if counts.len() == 1 { "" } else { "s" },
        if step == 0 {
            "?".into()
        } else {
            count(Some(step))
        }
    );
    if !whole.is_empty() {
        let min = whole.iter().copied().min().unwrap_or(0);
        let max = whole.iter().copied().max().unwrap_or(0);
        let avg = whole.iter().sum::<u64>() as f64 / whole.len() as f64;
        let _ = write!(
            s,
            ": min {}, avg {}, max {}",
            count(Some(min)),
            real(Some(avg)),
            count(Some(max))
        );
        if whole.len() < counts.len() {
            let _ = write!(s, " over the {} whole buckets", whole.len());
        }
    }
    s.push('\n');
    if counts.len() > 1 {
        let _ = writeln!(s, "{IN}{:<13} {}", "", sparkline(counts, SPARK_WIDTH));
    }
}

fn live_stats(s: &mut String, live: &Live) {
    match &live.servers {
        Part::Ok(servers) => {
            let _ = writeln!(
                s,
                "{IN}servers ({}): {}",
                opt(servers.source.as_deref()),
                servers.servers.len()
            );
            let mut t = Table::new(&[
                ("server", Align::Left),
                ("status", Align::Left),
                ("age s", Align::Right),
                ("uptime s", Align::Right),
                ("conns", Align::Right),
                ("accepted/s", Align::Right),
                ("bcast frames/s", Align::Right),
                ("slow-reader disc", Align::Right),
            ]);
            let mut odd = Vec::new();
            for part in &servers.servers {
                match part {
                    Part::Ok(v) => t.row(server_row(v)),
                    other => odd.push(other.why_not().unwrap_or_default()),
                }
            }
            write_or_none(s, &t);
            for why in odd {
                let _ = writeln!(s, "{IN2}a snapshot: {}", clean(&why));
            }
        }
        other => failed_line(s, IN, "servers", other),
    }
    match &live.consumers {
        Part::Ok(consumers) => {
            let _ = writeln!(
                s,
                "{IN}consumers ({}): {} (rates over 5 s; COPY+commit ms over 10 s)",
                opt(consumers.source.as_deref()),
                consumers.consumers.len()
            );
            let mut t = Table::new(&[
                ("consumer", Align::Left),
                ("status", Align::Left),
                ("age s", Align::Right),
                ("consumed/s", Align::Right),
                ("rows/s", Align::Right),
                ("commit p50", Align::Right),
                ("commit p99", Align::Right),
                ("retries", Align::Right),
                ("reason", Align::Left),
            ]);
            let mut odd = Vec::new();
            for part in &consumers.consumers {
                match part {
                    Part::Ok(v) => t.row(consumer_row(v)),
                    other => odd.push(other.why_not().unwrap_or_default()),
                }
            }
            write_or_none(s, &t);
            for why in odd {
                let _ = writeln!(s, "{IN2}a snapshot: {}", clean(&why));
            }
        }
        other => failed_line(s, IN, "consumers", other),
    }
    match &live.queues {
        Part::Ok(q) => queues(s, q),
        other => failed_line(s, IN, "queues", other),
    }
    match &live.database {
        Part::Ok(db) => database(s, db),
        other => failed_line(s, IN, "database", other),
    }
}

fn server_row(v: &ServerSnapshot) -> Vec<String> {
    let slow = v.totals.ok().and_then(|t| t.slow_reader_disconnects);
    vec![
        opt(v.server_id.as_deref()),
        opt(v.status.as_deref()),
        real(v.age_seconds),
        real(v.uptime_seconds),
        count(v.connections),
        real(v.accepted_per_second),
        real(v.broadcast_frames_per_second),
        count(slow),
    ]
}

fn consumer_row(v: &ConsumerSnapshot) -> Vec<String> {
    let db = v.database.ok();
    let commit = db.and_then(|d| d.copy_commit_ms.as_ref());
    vec![
        opt(v.consumer_id.as_deref()),
        opt(v.status.as_deref()),
        real(v.age_seconds),
        real(v.consumed_per_second),
        real(v.rows_per_second),
        ms(commit.and_then(|c| c.p50)),
        ms(commit.and_then(|c| c.p99)),
        count(db.and_then(|d| d.retries)),
        v.reason.as_deref().map_or(String::new(), clean),
    ]
}

fn queues(s: &mut String, q: &Queues) {
    let _ = write!(
        s,
        "{IN}queues ({}): {} messages queued",
        opt(q.source.as_deref()),
        count(q.total_messages)
    );
    if let Some(age) = q.age_seconds {
        let _ = write!(s, ", sampled {age:.1} s ago");
    }
    s.push('\n');
    let mut t = Table::new(&[
        ("room", Align::Right),
        ("depth", Align::Right),
        ("consumers", Align::Right),
        ("shards", Align::Left),
    ]);
    for r in &q.rooms {
        let shards: Vec<String> = r.shards.iter().map(|d| d.to_string()).collect();
        t.row(vec![
            id(r.room_id),
            count(r.messages),
            count(r.consumers),
            shards.join(" "),
        ]);
    }
    if !t.is_empty() {
        t.write(s, IN2);
    }
}

fn database(s: &mut String, db: &Database) {
    let _ = writeln!(s, "{IN}database {}", opt(db.address.as_deref()));
    match &db.pool {
        Part::Ok(p) => {
            let _ = writeln!(
                s,
                "{IN2}pool: {} of {} connections open ({} in use, {} idle), {} checkouts, {} timeouts, wait p99 {} ms",
                count(p.connections),
                count(p.max_size),
                count(p.in_use),
                count(p.idle),
                count(p.checkouts),
                count(p.timeouts),
                ms(p.wait_ms_p99)
            );
        }
        other => failed_line(s, IN2, "pool", other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(v: serde_json::Value) -> String {
        render(&Document::from_value(v).unwrap(), Options { lines: 10 })
    }

    #[test]
    fn an_empty_document_renders_every_section_as_missing() {
        let t = text(json!({}));
        for line in [
            "core queries: not in the document",
            "analytics: not in the document",
            "live stats: not in the document",
        ] {
            assert!(t.contains(line), "{line}\n{t}");
        }
    }

    #[test]
    fn series_stats_skip_buckets_clipped_by_the_window() {
        // Window 20:00:30 → 20:03:30: the first and last minute are partial.
        let t = text(json!({"analytics": {
            "window": {"start": "2026-12-01T20:00:30.000Z", "end": "2026-12-01T20:03:30.000Z"},
            "totalMessages": 700,
            "series": {"perMinute": {"start": "2026-12-01T20:00:00.000Z", "stepSeconds": 60,
                                      "counts": [50, 300, 300, 50]}}
        }}));
        assert!(
            t.contains(
                "per minute    4 buckets of 60 s: min 300, avg 300, max 300 over the 2 whole buckets"
            ),
            "{t}"
        );
    }

    #[test]
    fn message_times_drop_the_date_when_all_share_it() {
        let one = short_times(
            [
                Some("2026-12-01T21:10:24.123Z"),
                Some("2026-12-01T21:10:25.000Z"),
            ]
            .into_iter(),
        );
        assert_eq!(one, ["21:10:24.123", "21:10:25.000"]);
        let two = short_times(
            [
                Some("2026-12-01T23:59:59.999Z"),
                Some("2026-12-02T00:00:00.000Z"),
                None,
            ]
            .into_iter(),
        );
        assert_eq!(
            two,
            ["2026-12-01 23:59:59.999", "2026-12-02 00:00:00.000", "-"]
        );
    }

    #[test]
    fn message_text_cannot_break_lines_or_escape_to_the_terminal() {
        let t = text(
            json!({"coreQueries": {"roomMessages": {"roomId": 3, "count": 1, "messages": [
                {"userId": 1, "username": "user1", "messageType": "TEXT",
                 "message": "line1\nline2\u{1b}[2J", "serverTimestamp": "2026-12-01T21:10:24.123Z"}
            ]}}}),
        );
        assert!(!t.contains('\u{1b}'));
        let line = t.lines().find(|l| l.contains("line1")).unwrap();
        assert!(line.contains("line1 line2 [2J"), "{line}");
    }
}
