//! The questions BackdoorBench's leaderboard answers, asked of a protocol's table: which defense
//! does best on each attack, what each defense costs and leaves on average, and where this
//! table orders the defenses otherwise than BackdoorBench v2's CIFAR-10 leaderboard does.
//!
//! Defenses are compared by BackdoorBench's defense effectiveness rating,
//! `DER = (max(0, ΔASR) - max(0, ΔACC) + 1) / 2` in `[0, 1]`, where `ΔASR` and `ΔACC` are the drops
//! from the undefended model's (its "No defense" cell) to the defended one's: 1 removes an ASR
//! of 100% at no cost in accuracy, 0.5 changes nothing (or trades them evenly).

use crate::protocol_table::{ProtocolTable, Stat};

/// BackdoorBench v2's CIFAR-10 leaderboard (PreAct-ResNet-18, 10% poisoned, 5% clean data for
/// the defenses), ACC / ASR %: per attack, the undefended model, then FT, FP, NAD, ANP, I-BAU
/// (`None`: not reported). From the method specification.
const BACKDOORBENCH: &[Reference] = &[
    (
        "badnets",
        (91.32, 95.03),
        [
            Some((89.96, 1.48)),
            Some((91.31, 57.13)),
            Some((89.87, 2.14)),
            Some((84.17, 0.73)),
            Some((89.16, 1.29)),
        ],
    ),
    (
        "blended",
        (93.47, 99.92),
        [
            Some((92.78, 96.11)),
            Some((93.17, 99.26)),
            Some((92.17, 97.69)),
            Some((86.58, 2.19)),
            Some((87.00, 50.53)),
        ],
    ),
    (
        "wanet",
        (91.25, 89.73),
        [
            Some((93.48, 17.10)),
            Some((91.46, 1.09)),
            Some((93.17, 22.98)),
            Some((85.73, 0.43)),
            Some((89.49, 5.21)),
        ],
    ),
    (
        "iab",
        (90.67, 98.26),
        [
            Some((93.12, 1.72)),
            Some((91.74, 0.04)),
            Some((93.18, 1.68)),
            Some((90.36, 1.64)),
            Some((89.17, 27.08)),
        ],
    ),
    (
        "sig",
        (84.48, 98.27),
        [
            Some((90.80, 2.37)),
            Some((89.10, 26.20)),
            Some((90.02, 10.66)),
            Some((77.97, 0.01)),
            Some((85.67, 3.68)),
        ],
    ),
    (
        "lc",
        (84.59, 99.92),
        [
            Some((90.83, 11.34)),
            Some((89.53, 0.44)),
            Some((90.54, 11.28)),
            Some((82.16, 4.81)),
            None,
        ],
    ),
];

/// An attack's row of [`BACKDOORBENCH`]: its key, the undefended `(ACC, ASR)`, the defenses'.
type Reference = (&'static str, (f64, f64), [Option<(f64, f64)>; 5]);

/// The columns of [`BACKDOORBENCH`], as this project's tables name them.
const BACKDOORBENCH_COLUMNS: [&str; 5] = ["FT", "FP", "NAD", "ANP", "I-BAU"];

/// BackdoorBench's defense effectiveness rating of a defended `(ACC, ASR)` against the
/// undefended model's, all fractions; the rating in `[0, 1]`.
pub fn der(before: (f64, f64), after: (f64, f64)) -> f64 {
    let (acc_drop, asr_drop) = (before.0 - after.0, before.1 - after.1);
    (asr_drop.max(0.0) - acc_drop.max(0.0) + 1.0) / 2.0
}

/// One defended cell of an attack (fractions).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub column: String,
    pub acc: f64,
    pub asr: f64,
    pub der: f64,
}

/// An attack's defenses, best DER first.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranking {
    pub attack: String,
    /// The undefended model's ACC and ASR.
    pub undefended: (f64, f64),
    pub entries: Vec<Entry>,
}

/// One defense over the attacks it has a cell for.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub column: String,
    pub attacks: usize,
    /// Mean of the undefended ACC minus the defended (fractions).
    pub acc_drop: f64,
    pub asr: f64,
    pub der: f64,
    /// Attacks on which it has the best DER.
    pub wins: usize,
}

/// Two defenses BackdoorBench orders one way on an attack and this table the other, by DER.
#[derive(Clone, Debug, PartialEq)]
pub struct Reversal {
    pub attack: String,
    /// The one BackdoorBench rates higher, and its DER there and here.
    pub higher: (String, f64, f64),
    /// The one it rates lower, and its DER there and here.
    pub lower: (String, f64, f64),
}

/// The leaderboard of a table.
#[derive(Clone, Debug, PartialEq)]
pub struct Leaderboard {
    pub rankings: Vec<Ranking>,
    pub summaries: Vec<Summary>,
    /// Pairs of defenses compared with BackdoorBench (both rated there and here), and those
    /// ordered the other way.
    pub compared_pairs: usize,
    pub reversals: Vec<Reversal>,
}

/// The cell's mean ACC and ASR, when it has an ASR.
fn point(s: &Option<Stat>) -> Option<(f64, f64)> {
    let s = s.as_ref()?;
    Some((s.acc_mean, s.asr_mean?))
}

/// BackdoorBench's key for an attack row's label ("BadNets 10%" -> badnets, "IAB 10%" -> iab).
fn attack_key(label: &str) -> String {
    label
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

impl Leaderboard {
    /// The leaderboard of `table`'s finished cells (column 0 is "No defense"), compared with
    /// BackdoorBench's CIFAR-10 leaderboard when the table's data set is CIFAR-10; `None` when no
    /// attack has both an undefended and a defended cell with an ASR.
    pub fn of(table: &ProtocolTable) -> Option<Leaderboard> {
        let cifar10 = table.dataset.as_deref() == Some("cifar10");
        let mut rankings = Vec::new();
        for (attack, cells) in table.attacks.iter().zip(&table.cells) {
            let Some(undefended) = cells.first().and_then(point) else {
                continue;
            };
            let mut entries: Vec<Entry> = table
                .columns
                .iter()
                .zip(cells)
                .skip(1)
                .filter_map(|(column, c)| {
                    let (acc, asr) = point(c)?;
                    Some(Entry {
                        column: column.clone(),
                        acc,
                        asr,
                        der: der(undefended, (acc, asr)),
                    })
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            // Best first; equal ratings keep the table's column order.
            entries.sort_by(|a, b| b.der.total_cmp(&a.der));
            rankings.push(Ranking {
                attack: attack.clone(),
                undefended,
                entries,
            });
        }
        if rankings.is_empty() {
            return None;
        }
        let summaries = table
            .columns
            .iter()
            .skip(1)
            .filter_map(|column| {
                let mut rows = rankings.iter().filter_map(|r| {
                    let e = r.entries.iter().find(|e| &e.column == column)?;
                    let best = r.entries[0].der;
                    Some((r.undefended.0 - e.acc, e.asr, e.der, e.der == best))
                });
                let first = rows.next()?;
                let all: Vec<_> = std::iter::once(first).chain(rows).collect();
                let n = all.len() as f64;
                let mean =
                    |f: fn(&(f64, f64, f64, bool)) -> f64| all.iter().map(f).sum::<f64>() / n;
                Some(Summary {
                    column: column.clone(),
                    attacks: all.len(),
                    acc_drop: mean(|r| r.0),
                    asr: mean(|r| r.1),
                    der: mean(|r| r.2),
                    wins: all.iter().filter(|r| r.3).count(),
                })
            })
            .collect();
        let (compared_pairs, reversals) = match cifar10 {
            true => compare_with_backdoorbench(&rankings),
            false => (0, Vec::new()),
        };
        Some(Leaderboard {
            rankings,
            summaries,
            compared_pairs,
            reversals,
        })
    }

    /// The table of the best defense per attack: its header and rows (attack; the best,
    /// several when tied; the second), as the Markdown and the viewer show them.
    pub const BEST_HEADER: [&'static str; 3] =
        ["attack", "best defense (ACC / ASR / DER %)", "second"];

    /// The table of each defense's means: header, then [`Summary::row`].
    pub const MEANS_HEADER: [&'static str; 6] = [
        "defense",
        "attacks",
        "mean ACC drop",
        "mean ASR %",
        "mean DER %",
        "best on",
    ];

    /// The table of the reversals: header, then [`Reversal::row`].
    pub const REVERSALS_HEADER: [&'static str; 3] = ["attack", "higher there", "lower there"];

    /// How the defenses are rated, in a sentence.
    pub const RATING: &'static str = "Leaderboard, by BackdoorBench's defense effectiveness \
         rating DER = (max(0, ΔASR) - max(0, ΔACC) + 1) / 2 against the undefended model (100 \
         removes the backdoor at no cost in accuracy, 50 changes nothing)";

    /// What the comparison with BackdoorBench found, in a sentence (without its end), when the
    /// table was compared.
    pub fn comparison(&self) -> Option<String> {
        (self.compared_pairs > 0).then(|| {
            format!(
                "Against BackdoorBench v2's CIFAR-10 leaderboard (PreAct-ResNet-18, 10% \
                 poisoned, 5% clean data; FT, FP, NAD, ANP, I-BAU): {} of {} pairs of defenses \
                 on the same attack are ordered the other way by DER here",
                self.reversals.len(),
                self.compared_pairs
            )
        })
    }

    /// Markdown: the best defense per attack, each defense's means, and the pairs ordered
    /// otherwise than BackdoorBench's leaderboard does.
    pub fn markdown(&self) -> String {
        let table = |header: &[&str], rows: Vec<Vec<String>>| {
            let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
            let mut t = line(header.iter().map(|h| h.to_string()).collect());
            t.push_str(&line(vec!["---".to_string(); header.len()]).replace(' ', ""));
            rows.into_iter().for_each(|r| t.push_str(&line(r)));
            t
        };
        let mut s = format!("{}:\n\n", Self::RATING);
        s.push_str(&table(
            &Self::BEST_HEADER,
            self.rankings.iter().map(|r| r.row().to_vec()).collect(),
        ));
        s.push_str(
            "\nPer defense, over the attacks it has a cell for (ACC drop: the undefended ACC \
             minus the defended, in points):\n\n",
        );
        s.push_str(&table(
            &Self::MEANS_HEADER,
            self.summaries.iter().map(|d| d.row().to_vec()).collect(),
        ));
        if let Some(comparison) = self.comparison() {
            s.push_str(&format!("\n{comparison}"));
            if self.reversals.is_empty() {
                s.push_str(".\n");
            } else {
                s.push_str(" (DER % there -> here):\n\n");
                s.push_str(&table(
                    &Self::REVERSALS_HEADER,
                    self.reversals.iter().map(|r| r.row().to_vec()).collect(),
                ));
            }
        }
        s
    }
}

/// A rate as a percentage with one decimal.
fn pct(v: f64) -> String {
    format!("{:.1}", v * 100.0)
}

impl Entry {
    /// `FT (57.6 / 67.9 / 65.8)`: the column with its ACC, ASR and DER in percent.
    pub fn text(&self) -> String {
        format!(
            "{} ({} / {} / {})",
            self.column,
            pct(self.acc),
            pct(self.asr),
            pct(self.der)
        )
    }
}

impl Ranking {
    /// The attack, its best defenses (several when tied) and the next one ([`Entry::text`];
    /// `(none)` when there is none).
    pub fn row(&self) -> [String; 3] {
        let best = self.entries[0].der;
        let tied: Vec<String> = self
            .entries
            .iter()
            .take_while(|e| e.der == best)
            .map(Entry::text)
            .collect();
        let second = self.entries.iter().find(|e| e.der < best);
        [
            self.attack.clone(),
            tied.join(", "),
            second.map_or_else(|| "(none)".to_string(), Entry::text),
        ]
    }
}

impl Summary {
    /// The defense's row under [`Leaderboard::MEANS_HEADER`].
    pub fn row(&self) -> [String; 6] {
        [
            self.column.clone(),
            self.attacks.to_string(),
            pct(self.acc_drop),
            pct(self.asr),
            pct(self.der),
            self.wins.to_string(),
        ]
    }
}

impl Reversal {
    /// The attack and both defenses as `name DER-there -> DER-here`.
    pub fn row(&self) -> [String; 3] {
        let side = |(name, there, here): &(String, f64, f64)| {
            format!("{name} {} -> {}", pct(*there), pct(*here))
        };
        [self.attack.clone(), side(&self.higher), side(&self.lower)]
    }
}

/// The pairs of defenses rated on the same attack both here and by BackdoorBench, and those
/// this table orders the other way (strictly, both times).
fn compare_with_backdoorbench(rankings: &[Ranking]) -> (usize, Vec<Reversal>) {
    let mut pairs = 0;
    let mut reversals = Vec::new();
    for r in rankings {
        let key = attack_key(&r.attack);
        let Some((_, undefended, cells)) = BACKDOORBENCH.iter().find(|(k, _, _)| *k == key) else {
            continue;
        };
        // (column, DER there, DER here) for the defenses both have.
        let both: Vec<(&str, f64, f64)> = BACKDOORBENCH_COLUMNS
            .iter()
            .zip(cells)
            .filter_map(|(column, c)| {
                let percent = |(acc, asr): (f64, f64)| (acc / 100.0, asr / 100.0);
                let there = der(percent(*undefended), percent((*c)?));
                let here = r.entries.iter().find(|e| e.column == *column)?.der;
                Some((*column, there, here))
            })
            .collect();
        for (i, a) in both.iter().enumerate() {
            for b in &both[i + 1..] {
                pairs += 1;
                let (higher, lower) = match a.1 >= b.1 {
                    true => (a, b),
                    false => (b, a),
                };
                if higher.1 > lower.1 && lower.2 > higher.2 {
                    reversals.push(Reversal {
                        attack: r.attack.clone(),
                        higher: (higher.0.to_string(), higher.1, higher.2),
                        lower: (lower.0.to_string(), lower.1, lower.2),
                    });
                }
            }
        }
    }
    (pairs, reversals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(acc: f64, asr: f64) -> Option<Stat> {
        Stat::of(&[(acc, Some(asr))], 1)
    }

    fn table(rows: Vec<(&str, Vec<Option<Stat>>)>) -> ProtocolTable {
        let columns = ["No defense", "FT", "ANP", "KD"].map(String::from).to_vec();
        ProtocolTable {
            kind: crate::protocol_table::KIND.into(),
            attacks: rows.iter().map(|r| r.0.to_string()).collect(),
            columns: columns.clone(),
            models: vec!["t0-s0".into()],
            cells: rows.into_iter().map(|r| r.1).collect(),
            mean: vec![None; columns.len()],
            dataset: Some("cifar10".into()),
        }
    }

    #[test]
    fn der_is_backdoorbenchs() {
        // Removing an ASR of 1 at no cost: 1; nothing changed: 0.5; gains are not counted.
        assert_eq!(der((0.9, 1.0), (0.9, 0.0)), 1.0);
        assert_eq!(der((0.9, 1.0), (0.9, 1.0)), 0.5);
        assert_eq!(der((0.5, 0.9), (0.6, 0.95)), 0.5);
        assert!((der((0.9, 0.9), (0.8, 0.1)) - 0.85).abs() < 1e-12);
        // FT-SAM's paper (which defines it): BadNets 91.82/93.79 -> FT 90.29/1.70 is 95.28%.
        assert!((der((0.9182, 0.9379), (0.9029, 0.0170)) - 0.9528).abs() < 1e-4);
    }

    #[test]
    fn ranks_summarises_and_finds_reversals() {
        let t = table(vec![
            (
                "BadNets 10%",
                vec![
                    stat(0.5, 0.99),
                    stat(0.57, 0.68),
                    stat(0.09, 0.0),
                    stat(0.52, 0.95),
                ],
            ),
            (
                "Blended 10%",
                vec![stat(0.5, 0.96), stat(0.5, 0.2), None, stat(0.45, 0.5)],
            ),
            ("SIG 100%", vec![None, stat(0.5, 0.1), None, None]),
        ]);
        let l = Leaderboard::of(&t).expect("a leaderboard");
        let other = Leaderboard::of(&ProtocolTable {
            dataset: Some("gtsrb".into()),
            ..t.clone()
        })
        .expect("a leaderboard");
        assert_eq!((other.compared_pairs, &other.rankings), (0, &l.rankings));
        assert!(!other.markdown().contains("BackdoorBench v2"));
        assert_eq!(l.rankings.len(), 2, "SIG has no undefended cell");
        let bad = &l.rankings[0];
        let order: Vec<&str> = bad.entries.iter().map(|e| e.column.as_str()).collect();
        // FT: (0.31 - 0 + 1)/2 = 0.655; ANP: (0.99 - 0.41 + 1)/2 = 0.79; KD: 0.52.
        assert_eq!(order, ["ANP", "FT", "KD"]);
        let ft = l.summaries.iter().find(|s| s.column == "FT").expect("FT");
        assert_eq!((ft.attacks, ft.wins), (2, 1));
        assert!((ft.asr - (0.68 + 0.2) / 2.0).abs() < 1e-12);
        assert!((ft.acc_drop - (-0.07 + 0.0) / 2.0).abs() < 1e-12);
        // BackdoorBench on BadNets: FT 96.1 above ANP 93.6 (DER %); here ANP above FT.
        assert_eq!(l.compared_pairs, 1, "FT and ANP on BadNets only");
        assert_eq!(l.reversals.len(), 1);
        let r = &l.reversals[0];
        assert_eq!((r.higher.0.as_str(), r.lower.0.as_str()), ("FT", "ANP"));
        let md = l.markdown();
        assert!(md.contains("| BadNets 10% | ANP (9.0 / 0.0 / 79.0) | FT (57.0 / 68.0 / 65.5) |"));
        assert!(md.contains("1 of 1 pairs"), "{md}");
        assert!(
            Leaderboard::of(&table(vec![("X", vec![None, stat(0.5, 0.1), None, None])])).is_none()
        );
    }
}
