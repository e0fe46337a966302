//! Transfers over time as a picture a person can open: an SVG bar chart, one group of bars
//! per day (bundles sent, applied, failed or refused). Written by hand: a few dozen elements,
//! not worth a plotting library's dependencies.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::ledger::TransferEvent;
use crate::reports::TransferState;

const DAY: u64 = 86_400;

/// Counts per day (days since the epoch, UTC): sent, applied, failed (failed + refused).
pub fn per_day(events: &[TransferEvent]) -> BTreeMap<u64, [u64; 3]> {
    let mut days: BTreeMap<u64, [u64; 3]> = BTreeMap::new();
    for e in events {
        let slot = match e.state {
            TransferState::InTransit => 0,
            TransferState::Applied => 1,
            TransferState::Failed | TransferState::Refused => 2,
            TransferState::Received => continue,
        };
        days.entry(e.at / DAY).or_default()[slot] += 1;
    }
    days
}

/// The chart, as an SVG document.
pub fn transfers_svg(events: &[TransferEvent], title: &str) -> String {
    let days = per_day(events);
    let (first, last) = match (days.keys().next(), days.keys().next_back()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => (0, 0),
    };
    let n = if days.is_empty() { 1 } else { last - first + 1 } as usize;
    let max = days
        .values()
        .flat_map(|c| c.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let (left, top, plot_h) = (60.0, 50.0, 260.0);
    let group_w = (720.0 / n as f64).clamp(18.0, 90.0);
    let plot_w = group_w * n as f64;
    let width = left + plot_w + 180.0;
    let height = top + plot_h + 70.0;
    let colors = [
        ("sent", "#6b8fd6"),
        ("applied", "#3a9e5c"),
        ("failed or refused", "#d2503c"),
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="24" font-size="16">{}</text>"#,
        escape(title)
    );
    // Horizontal grid with counts.
    let step = nice_step(max);
    let mut v = 0;
    while v <= max {
        let y = top + plot_h - plot_h * v as f64 / max as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v}</text>"##,
            left + plot_w,
            left - 6.0,
            y + 4.0
        );
        v += step;
    }
    for (i, day) in (first..first + n as u64).enumerate() {
        let counts = days.get(&day).copied().unwrap_or_default();
        let bar_w = (group_w - 6.0) / 3.0;
        for (k, count) in counts.iter().enumerate() {
            let h = plot_h * *count as f64 / max as f64;
            let x = left + i as f64 * group_w + 3.0 + k as f64 * bar_w;
            let y = top + plot_h - h;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{}"><title>{}: {count} {}</title></rect>"#,
                colors[k].1,
                date(day),
                colors[k].0
            );
        }
        if n <= 16 || i % n.div_ceil(16) == 0 {
            let x = left + i as f64 * group_w + group_w / 2.0;
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="end" transform="rotate(-45 {x:.1} {:.1})">{}</text>"#,
                top + plot_h + 16.0,
                top + plot_h + 16.0,
                date(day)
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    for (k, (name, color)) in colors.iter().enumerate() {
        let y = top + 10.0 + k as f64 * 20.0;
        let x = left + plot_w + 20.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{y:.1}">{name}</text>"#,
            y - 10.0,
            x + 18.0
        );
    }
    if days.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no transfers recorded</text>"#,
            left + plot_w / 2.0,
            top + plot_h / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn nice_step(max: u64) -> u64 {
    let raw = (max as f64 / 5.0).ceil().max(1.0) as u64;
    let mag = 10u64.pow((raw as f64).log10().floor() as u32);
    [1, 2, 5, 10]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(raw)
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01, UTC).
pub fn date(day: u64) -> String {
    // Howard Hinnant's days-from-civil inverse: exact for every day after 1970.
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(state: TransferState, at: u64) -> TransferEvent {
        TransferEvent {
            device_id: "d".into(),
            bundle_id: "b".into(),
            state,
            at,
            source: "usb".into(),
        }
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(20_454), "2026-01-01");
        assert_eq!(date(19_416), "2023-02-28");
        assert_eq!(date(19_417), "2023-03-01");
        assert_eq!(date(19_782), "2024-02-29");
    }

    #[test]
    fn a_chart_counts_each_day() {
        let t = 20_454 * DAY;
        let events = [
            event(TransferState::InTransit, t),
            event(TransferState::InTransit, t + 5),
            event(TransferState::Applied, t + 2 * DAY),
            event(TransferState::Refused, t + 2 * DAY + 1),
            event(TransferState::Received, t + DAY),
        ];
        let days = per_day(&events);
        assert_eq!(days[&20_454], [2, 0, 0]);
        assert_eq!(days[&20_456], [0, 1, 1]);
        let svg = transfers_svg(&events, "fleet <test>");
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("fleet &lt;test&gt;"));
        assert!(svg.contains("2026-01-03: 1 applied"));
        assert!(
            svg.contains("2026-01-02: 0 sent"),
            "an empty day keeps its place"
        );
        assert!(transfers_svg(&[], "x").contains("no transfers recorded"));
    }
}
