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

/// Left margin, room for the counts of the grid.
const LEFT: f64 = 60.0;
/// Top margin, room for the title.
const TOP: f64 = 50.0;
/// Height of the plot area.
const PLOT_H: f64 = 260.0;
/// The three bars of a day, in the order of [`per_day`]'s counts: legend name and colour.
const SERIES: [(&str, &str); 3] = [
    ("sent", "#6b8fd6"),
    ("applied", "#3a9e5c"),
    ("failed or refused", "#d2503c"),
];

/// Where the chart's parts go, worked out from the counts alone.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Layout {
    /// The first day shown (days since the epoch); 0 when there are none.
    first: u64,
    /// How many days are shown, from `first` on, empty days included (at least 1).
    days: usize,
    /// The largest count of any bar (at least 1): the top of the scale.
    max: u64,
    /// Width of one day's group of bars.
    group_w: f64,
    /// Width of the plot area (all groups).
    plot_w: f64,
    /// Width of the whole picture.
    width: f64,
    /// Height of the whole picture.
    height: f64,
}

impl Layout {
    /// The layout for `days`' counts: one group per day from the first to the last, each
    /// between 18 and 90 wide, aiming at a plot 720 wide.
    fn of(days: &BTreeMap<u64, [u64; 3]>) -> Layout {
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
        let group_w = (720.0 / n as f64).clamp(18.0, 90.0);
        let plot_w = group_w * n as f64;
        Layout {
            first,
            days: n,
            max,
            group_w,
            plot_w,
            width: LEFT + plot_w + 180.0,
            height: TOP + PLOT_H + 70.0,
        }
    }

    /// Whether the `i`th day gets a date under its bars: every day up to 16 days, else about
    /// 16 labels spread evenly.
    fn labels_day(&self, i: usize) -> bool {
        let n = self.days;
        n <= 16 || i.is_multiple_of(n.div_ceil(16))
    }
}

/// The chart, as an SVG document.
pub fn transfers_svg(events: &[TransferEvent], title: &str) -> String {
    let days = per_day(events);
    let layout = Layout::of(&days);
    let mut s = String::new();
    write_header(&mut s, &layout, title);
    write_grid(&mut s, &layout);
    for (i, day) in (layout.first..layout.first + layout.days as u64).enumerate() {
        let counts = days.get(&day).copied().unwrap_or_default();
        write_day(&mut s, &layout, i, day, counts);
    }
    write_axis_and_legend(&mut s, &layout);
    if days.is_empty() {
        let (left, top, plot_h) = (LEFT, TOP, PLOT_H);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no transfers recorded</text>"#,
            left + layout.plot_w / 2.0,
            top + plot_h / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The `<svg>` element, a white background and the title.
fn write_header(s: &mut String, layout: &Layout, title: &str) {
    let (width, height, left) = (layout.width, layout.height, LEFT);
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
}

/// Horizontal grid lines with their counts, every [`nice_step`] from 0 to the top of the scale.
fn write_grid(s: &mut String, layout: &Layout) {
    let (left, top, plot_h, plot_w, max) = (LEFT, TOP, PLOT_H, layout.plot_w, layout.max);
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
}

/// The `i`th day's three bars (each with a tooltip) and, if [`Layout::labels_day`], its date.
fn write_day(s: &mut String, layout: &Layout, i: usize, day: u64, counts: [u64; 3]) {
    let (left, top, plot_h, group_w, max) = (LEFT, TOP, PLOT_H, layout.group_w, layout.max);
    let bar_w = (group_w - 6.0) / 3.0;
    for (k, count) in counts.iter().enumerate() {
        let h = plot_h * *count as f64 / max as f64;
        let x = left + i as f64 * group_w + 3.0 + k as f64 * bar_w;
        let y = top + plot_h - h;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{}"><title>{}: {count} {}</title></rect>"#,
            SERIES[k].1,
            date(day),
            SERIES[k].0
        );
    }
    if layout.labels_day(i) {
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

/// The x axis under the bars, and the legend to the right of the plot.
fn write_axis_and_legend(s: &mut String, layout: &Layout) {
    let (left, top, plot_h, plot_w) = (LEFT, TOP, PLOT_H, layout.plot_w);
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    for (k, (name, color)) in SERIES.iter().enumerate() {
        let y = top + 10.0 + k as f64 * 20.0;
        let x = left + plot_w + 20.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{y:.1}">{name}</text>"#,
            y - 10.0,
            x + 18.0
        );
    }
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

    /// Twenty days from 2026-01-01, so that only every other date is written, some without
    /// transfers, one busy enough for a grid step above 1.
    fn twenty_days() -> Vec<TransferEvent> {
        let t = 20_454 * DAY;
        let mut events = vec![
            event(TransferState::InTransit, t),
            event(TransferState::Applied, t + 3600),
            event(TransferState::Failed, t + 19 * DAY),
        ];
        for k in 0..13 {
            events.push(event(TransferState::InTransit, t + 4 * DAY + k));
            events.push(event(TransferState::Refused, t + 7 * DAY + k));
        }
        events.push(event(TransferState::Received, t + 9 * DAY));
        events
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // SIDELOAD_BLESS=1 rewrites the golden file
    fn the_chart_matches_its_golden_file_byte_for_byte() {
        let svg = transfers_svg(&twenty_days(), "fleet \"edge\" <&>");
        if std::env::var_os("SIDELOAD_BLESS").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/chart/twenty-days.expected.svg"
            );
            std::fs::write(path, &svg).unwrap();
            return;
        }
        assert_eq!(
            svg,
            include_str!("../tests/data/chart/twenty-days.expected.svg")
        );
    }

    #[test]
    fn the_layout_spans_first_to_last_day_and_clamps_group_width() {
        let empty = Layout::of(&BTreeMap::new());
        assert_eq!(
            (empty.first, empty.days, empty.max, empty.group_w),
            (0, 1, 1, 90.0)
        );
        assert_eq!(
            (empty.plot_w, empty.width, empty.height),
            (90.0, 330.0, 380.0)
        );

        let days = BTreeMap::from([(10, [2, 0, 0]), (12, [0, 5, 1])]);
        let three = Layout::of(&days);
        assert_eq!((three.first, three.days, three.max), (10, 3, 5));
        assert_eq!(
            (three.group_w, three.plot_w, three.width),
            (90.0, 270.0, 510.0)
        );

        let days = BTreeMap::from([(0, [1, 0, 0]), (99, [0, 0, 1])]);
        let hundred = Layout::of(&days);
        assert_eq!(
            (hundred.days, hundred.group_w, hundred.plot_w),
            (100, 18.0, 1800.0)
        );
        let forty = Layout::of(&BTreeMap::from([(0, [1, 0, 0]), (39, [1, 0, 0])]));
        assert_eq!(forty.group_w, 18.0);
    }

    #[test]
    fn dates_label_every_day_up_to_16_then_about_16_days() {
        let sixteen = Layout::of(&BTreeMap::from([(0, [1, 0, 0]), (15, [1, 0, 0])]));
        assert!((0..16).all(|i| sixteen.labels_day(i)));
        let forty = Layout::of(&BTreeMap::from([(0, [1, 0, 0]), (39, [1, 0, 0])]));
        let labelled: Vec<usize> = (0..40).filter(|&i| forty.labels_day(i)).collect();
        assert_eq!(labelled, (0..40).step_by(3).collect::<Vec<_>>());
    }
}
