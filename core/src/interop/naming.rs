//! The parameter names of the model layouts cleanse reads and writes, and the name table that
//! maps cleanse's own names onto them.
//!
//! cleanse's names ("canonical") are its modules' field paths with PyTorch's tensor names at the
//! leaves (`stem_bn.weight`, not Burn's `gamma`). The other layouts rename a few modules:
//!
//! | cleanse                    | `backdoorbench` (kuangliu, BackdoorBench) | `bcu` (torchvision, the authors' code) |
//! |----------------------------|-------------------------------------------|----------------------------------------|
//! | `stem_conv`                | `conv1`                                   | `conv1`                                |
//! | `stem_bn` (ResNet-18)      | `bn1`                                     | `bn1`                                  |
//! | `layerS.B.shortcut.conv`   | `layerS.B.shortcut.0`                     | `layerS.B.downsample.0`                |
//! | `layerS.B.shortcut.bn`     | `layerS.B.shortcut.1`                     | `layerS.B.downsample.1`                |
//! | `layerS.B.shortcut` (PreAct) | `layerS.B.shortcut.0`                   | `layerS.B.downsample.0`                |
//! | `fc`                       | `linear`                                  | `fc`                                   |
//!
//! Everything else (`layerS.B.conv1`, `bn1`, `conv2`, `bn2`) is the same in all three.

use serde::{Deserialize, Serialize};

/// A naming of a model's parameters: the one place the layouts are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Naming {
    /// BackdoorBench's `PreActResNet18` and the kuangliu CIFAR ResNet-18 it descends from.
    Backdoorbench,
    /// torchvision's ResNet names, which the authors' code (BCU) uses.
    Bcu,
    /// cleanse's own module paths.
    Cleanse,
}

impl Naming {
    /// Every naming, in the order detection tries them.
    pub const ALL: [Naming; 3] = [Naming::Backdoorbench, Naming::Bcu, Naming::Cleanse];

    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Naming::Backdoorbench => "backdoorbench",
            Naming::Bcu => "bcu",
            Naming::Cleanse => "cleanse",
        }
    }

    /// The name under this naming of the parameter cleanse calls `canonical`.
    pub fn rename(self, canonical: &str) -> String {
        let (stem_conv, stem_bn, shortcut, fc) = match self {
            Naming::Cleanse => return canonical.to_string(),
            Naming::Backdoorbench => ("conv1", "bn1", "shortcut", "linear"),
            Naming::Bcu => ("conv1", "bn1", "downsample", "fc"),
        };
        let parts: Vec<&str> = canonical.split('.').collect();
        match parts.as_slice() {
            ["stem_conv", leaf] => format!("{stem_conv}.{leaf}"),
            ["stem_bn", leaf] => format!("{stem_bn}.{leaf}"),
            ["fc", leaf] => format!("{fc}.{leaf}"),
            [layer, block, "shortcut", "conv", leaf] => {
                format!("{layer}.{block}.{shortcut}.0.{leaf}")
            }
            [layer, block, "shortcut", "bn", leaf] => {
                format!("{layer}.{block}.{shortcut}.1.{leaf}")
            }
            [layer, block, "shortcut", leaf] => format!("{layer}.{block}.{shortcut}.0.{leaf}"),
            _ => canonical.to_string(),
        }
    }
}

impl std::str::FromStr for Naming {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "torchvision" => Ok(Naming::Bcu),
            _ => Naming::ALL
                .into_iter()
                .find(|n| n.name() == s)
                .ok_or_else(|| {
                    format!(
                        "expected one of backdoorbench, bcu (= torchvision), cleanse; got `{s}`"
                    )
                }),
        }
    }
}

/// The name of the batch-norm counter PyTorch keeps beside a BN's running statistics, for the
/// canonical name of that BN's running variance (`None` for any other parameter).
pub fn batches_tracked_of(canonical_running_var: &str) -> Option<String> {
    canonical_running_var
        .strip_suffix(".running_var")
        .map(|bn| format!("{bn}.num_batches_tracked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_follow_the_table() {
        let cases = [
            ("stem_conv.weight", "conv1.weight", "conv1.weight"),
            (
                "stem_bn.running_mean",
                "bn1.running_mean",
                "bn1.running_mean",
            ),
            (
                "layer2.0.shortcut.conv.weight",
                "layer2.0.shortcut.0.weight",
                "layer2.0.downsample.0.weight",
            ),
            (
                "layer3.0.shortcut.bn.bias",
                "layer3.0.shortcut.1.bias",
                "layer3.0.downsample.1.bias",
            ),
            (
                "layer4.0.shortcut.weight",
                "layer4.0.shortcut.0.weight",
                "layer4.0.downsample.0.weight",
            ),
            (
                "layer1.1.bn2.weight",
                "layer1.1.bn2.weight",
                "layer1.1.bn2.weight",
            ),
            ("fc.weight", "linear.weight", "fc.weight"),
        ];
        for (canonical, bb, bcu) in cases {
            assert_eq!(Naming::Backdoorbench.rename(canonical), bb);
            assert_eq!(Naming::Bcu.rename(canonical), bcu);
            assert_eq!(Naming::Cleanse.rename(canonical), canonical);
        }
        assert_eq!("torchvision".parse::<Naming>(), Ok(Naming::Bcu));
        assert!("keras".parse::<Naming>().is_err());
        assert_eq!(
            batches_tracked_of("layer1.0.bn1.running_var").as_deref(),
            Some("layer1.0.bn1.num_batches_tracked")
        );
        assert_eq!(batches_tracked_of("fc.weight"), None);
    }
}
