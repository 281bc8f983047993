//! Line charts as SVG, scaled by the crate's `Axis` and `polyline`.

use crate::{Axis, Series, polyline};
use leptos::prelude::*;

const W: f64 = 420.0;
const H: f64 = 200.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 28.0;
const COLORS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

/// A chart of `series` over epochs; `percent` fixes the y axis to 0..100.
pub fn chart(id: &'static str, title: String, series: Vec<Series>, percent: bool) -> impl IntoView {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (xmin, xmax) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let x = Axis::nice(xmin.min(1.0), xmax.max(1.0), 8);
    let y = if percent {
        Axis::nice(0.0, 100.0, 6)
    } else {
        let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        Axis::nice(lo.min(0.0), hi, 6)
    };
    let (pw, ph) = (W - LEFT - 8.0, H - BOTTOM - 8.0);
    let yticks = y
        .ticks
        .iter()
        .map(|&t| {
            let py = 8.0 + ph - y.scale(t, ph);
            view! {
                <line x1=LEFT x2=LEFT + pw y1=py y2=py stroke="#ddd"/>
                <text x=LEFT - 4.0 y=py + 4.0 text-anchor="end" font-size="11">{format!("{t}")}</text>
            }
        })
        .collect::<Vec<_>>();
    let xticks = x
        .ticks
        .iter()
        .map(|&t| {
            let px = LEFT + x.scale(t, pw);
            view! {
                <text x=px y=H - 12.0 text-anchor="middle" font-size="11">{format!("{t}")}</text>
            }
        })
        .collect::<Vec<_>>();
    let lines = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let pts = polyline(s, &x, &y, pw, ph);
            let color = COLORS[i % COLORS.len()];
            // Dots too, so that a single epoch shows (short series only: per-batch lines are dense).
            let dots = (s.points.len() <= 60)
                .then(|| {
                    s.points
                        .iter()
                        .map(|&(a, b)| {
                            view! { <circle cx=x.scale(a, pw) cy=ph - y.scale(b, ph) r="3" fill=color/> }
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            view! {
                <g transform=format!("translate({LEFT},8)")>
                    <polyline points=pts fill="none" stroke=color stroke-width="2"/>
                    {dots}
                </g>
            }
        })
        .collect::<Vec<_>>();
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let color = COLORS[i % COLORS.len()];
            view! { <span class="legend" style:color=color>{format!("— {}", s.label)}</span> }
        })
        .collect::<Vec<_>>();
    view! {
        <figure class="chart" id=id>
            <figcaption>{title} " " {legend}</figcaption>
            <svg viewBox=format!("0 0 {W} {H}") width=W height=H>
                {yticks}
                {xticks}
                <text x=LEFT + pw / 2.0 y=H - 1.0 text-anchor="middle" font-size="11">"epoch"</text>
                {lines}
            </svg>
        </figure>
    }
}
