//! What the binary prints while it works: the training progress, and numbers in human units.

use lora_wgpu::train::Event;

/// A progress bar on a terminal, plain log lines otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(terminal: bool) -> Self {
        Progress {
            bar: terminal.then(|| {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]",
                    )
                    .expect("a valid template"),
                );
                bar
            }),
        }
    }

    pub fn line(&self, s: String) {
        match &self.bar {
            Some(b) => b.println(s),
            None => println!("{s}"),
        }
    }

    pub fn event(&self, e: &Event) {
        match e {
            Event::Start {
                step, total_steps, ..
            } => {
                if let Some(b) = &self.bar {
                    b.set_length(*total_steps);
                    b.set_position(*step);
                }
            }
            Event::Log(r) => {
                if let Some(b) = &self.bar {
                    b.set_position(r.step);
                    b.set_message(format!(
                        "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                        r.loss, r.lr, r.tokens_per_sec
                    ));
                }
                self.line(format!(
                    "step {:>6}  epoch {:>6.2}  loss {:.4}  lr {:.3e}  grad_norm {:.3}  {:>8.1} tok/s  gpu {}",
                    r.step, r.epoch, r.loss, r.lr, r.grad_norm, r.tokens_per_sec, bytes(r.gpu_bytes)
                ));
            }
            Event::Eval {
                step,
                loss,
                perplexity,
                best,
            } => self.line(format!(
                "eval {:>6}  val_loss {loss:.4}  val_ppl {perplexity:.2}{}",
                step,
                if *best { "  (best)" } else { "" }
            )),
            Event::Skipped { step, loss } => self.line(format!(
                "warning: step {step} skipped: non-finite gradients (loss {loss})"
            )),
            Event::Saved { step, path } => {
                self.line(format!("saved  {step:>6}  {}", path.display()))
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A count with a K, M or B suffix.
pub fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2}B", x / 1e9),
        x if x >= 1e6 => format!("{:.1}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}K", x / 1e3),
        x => format!("{x}"),
    }
}

/// A byte count in B, KiB, MiB or GiB.
pub fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
