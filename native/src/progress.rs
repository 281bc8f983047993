//! Progress bars for epochs and batches (drawn only on a terminal), plus one log line per epoch.

use cleanse_core::engine::Observer;
use cleanse_core::report::EpochRecord;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Bars {
    multi: MultiProgress,
    epochs: Option<ProgressBar>,
    batches: Option<ProgressBar>,
    total_epochs: usize,
}

impl Bars {
    pub fn new() -> Self {
        Bars {
            multi: MultiProgress::new(),
            epochs: None,
            batches: None,
            total_epochs: 0,
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.batches {
            b.finish_and_clear();
        }
        if let Some(e) = &self.epochs {
            e.finish();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Observer for Bars {
    fn finish(&mut self) {
        Bars::finish(self);
    }

    fn start(&mut self, first_epoch: usize, epochs: usize, batches: usize) {
        self.total_epochs = epochs;
        let e = self.multi.add(ProgressBar::new(epochs as u64));
        e.set_style(style(
            "epoch {pos:>3}/{len} [{bar:30}] {elapsed_precise} eta {eta} {msg}",
        ));
        e.set_position(first_epoch as u64);
        let b = self.multi.add(ProgressBar::new(batches as u64));
        b.set_style(style("batch {pos:>4}/{len} [{bar:30}] {msg}"));
        if first_epoch > 0 {
            let _ = self
                .multi
                .println(format!("resuming at epoch {}", first_epoch + 1));
        }
        self.epochs = Some(e);
        self.batches = Some(b);
    }

    fn batch(&mut self, _epoch: usize, batch: usize, loss: f64, acc: f64, ips: f64) {
        if let Some(b) = &self.batches {
            if batch == 0 {
                b.reset();
            }
            b.set_position(batch as u64 + 1);
            b.set_message(format!("loss {loss:.4} acc {acc:.3} {ips:.1} img/s"));
        }
    }

    fn epoch(&mut self, r: &EpochRecord) {
        let asr = r.asr.map(|a| format!(" asr {a:.4}")).unwrap_or_default();
        // An epoch the run did not evaluate (--eval-every) shows only its training.
        let measured = match r.clean_acc {
            Some(acc) => format!("clean_acc {acc:.4}{asr}"),
            None => "not evaluated".into(),
        };
        let line = format!(
            "epoch {:>3}/{} lr {:.4} loss {:.4} train_acc {:.4} {measured} {:.1}s {:.1} img/s",
            r.epoch, self.total_epochs, r.lr, r.loss, r.train_acc, r.seconds, r.images_per_sec
        );
        if let Some(e) = &self.epochs {
            e.set_position(r.epoch as u64);
            e.set_message(measured);
        }
        if self.multi.is_hidden() {
            errln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }
}
