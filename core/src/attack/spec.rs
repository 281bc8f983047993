//! An attack written on one line, `KIND[:key=value,...]` (`badnets:target=3`,
//! `blended:alpha=0.1,seed=2`): how a model trained elsewhere is measured against a trigger
//! cleanse can draw from its settings. Unnamed settings are the supplement's.

use super::{AttackConfig, AttackKind};
use crate::data::DatasetKind;
use crate::{Error, Result};

/// The keys a spec may set, with what each expects.
const KEYS: [(&str, &str); 8] = [
    ("target", "a class index"),
    ("all-to-all", "true or false"),
    (
        "seed",
        "an unsigned integer (Blended's pattern, WaNet's grid)",
    ),
    ("alpha", "Blended's blend ratio in (0, 1]"),
    ("sig-delta", "SIG's amplitude in pixel units of 255"),
    ("sig-frequency", "SIG's frequency"),
    ("wanet-k", "WaNet's control grid size"),
    ("wanet-s", "WaNet's warp strength"),
];

/// Parses `KIND[:key=value,...]` into the supplement's settings for `kind` on `dataset` with
/// the named ones replaced. IAB (two trained networks) and LC at training time need their run;
/// LC's test-time trigger (four corner patches) is drawn here.
pub fn parse(spec: &str, dataset: DatasetKind) -> Result<AttackConfig> {
    let flag = "attack-spec";
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let kind = AttackKind::ALL
        .into_iter()
        .find(|k| k.name() == kind.trim())
        .ok_or_else(|| {
            Error::config(
                flag,
                format!(
                    "`{spec}`: unknown attack `{kind}`; expected one of {}",
                    AttackKind::ALL.map(|k| k.name()).join(", ")
                ),
            )
        })?;
    if kind == AttackKind::Iab {
        return Err(Error::config(
            flag,
            "IAB's trigger is a pair of trained networks; measure against its run with --attack DIR",
        ));
    }
    let mut c = AttackConfig::supplement(kind, dataset);
    let mut seen: Vec<&str> = Vec::new();
    for pair in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::config(flag, format!("`{pair}`: expected key=value")))?;
        let (key, value) = (key.trim(), value.trim());
        if seen.contains(&key) {
            return Err(Error::config(
                flag,
                format!("`{spec}`: `{key}` is given twice; give each key once"),
            ));
        }
        seen.push(key);
        let expect = KEYS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, e)| *e)
            .ok_or_else(|| {
                Error::config(
                    flag,
                    format!(
                        "unknown key `{key}`; expected one of {}",
                        KEYS.map(|(k, _)| k).join(", ")
                    ),
                )
            })?;
        let bad = || Error::config(flag, format!("`{key}={value}`: expected {expect}"));
        let f = || {
            value
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(bad)
        };
        let u = || value.parse::<u64>().map_err(|_| bad());
        match key {
            "target" => c.target = usize::try_from(u()?).map_err(|_| bad())?,
            "all-to-all" => c.all_to_all = value.parse::<bool>().map_err(|_| bad())?,
            "seed" => c.seed = u()?,
            "alpha" => c.blend_alpha = f()?,
            "sig-delta" => c.sig_delta = f()? / 255.0,
            "sig-frequency" => c.sig_frequency = f()?,
            "wanet-k" => c.wanet_k = usize::try_from(u()?).map_err(|_| bad())?,
            "wanet-s" => c.wanet_s = f()?,
            _ => return Err(bad()),
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_set_what_they_name_and_reject_the_rest() {
        let c = parse("badnets", DatasetKind::Cifar10).expect("plain");
        assert_eq!(
            c,
            AttackConfig::supplement(AttackKind::Badnets, DatasetKind::Cifar10)
        );
        let c = parse("blended: target=3, alpha=0.1,seed=9", DatasetKind::Cifar10).expect("set");
        assert_eq!((c.target, c.blend_alpha, c.seed), (3, 0.1, 9));
        let e = parse("blended:alpha=0.1,alpha=0.3", DatasetKind::Cifar10)
            .expect_err("twice")
            .to_string();
        assert!(e.contains("`alpha` is given twice"), "{e}");
        let c = parse("sig:sig-delta=60", DatasetKind::Cifar10).expect("sig");
        assert!((c.sig_delta - 60.0 / 255.0).abs() < 1e-7);
        assert!(
            parse("badnets:all-to-all=true", DatasetKind::Gtsrb)
                .expect("a2a")
                .all_to_all
        );
        for (bad, says) in [
            ("trojan", "unknown attack `trojan`"),
            ("iab", "--attack DIR"),
            ("badnets:target", "expected key=value"),
            ("badnets:colour=red", "unknown key `colour`"),
            ("badnets:target=-1", "`target=-1`: expected a class index"),
            ("blended:alpha=nan", "expected Blended's blend ratio"),
        ] {
            let e = parse(bad, DatasetKind::Cifar10).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
