//! `--screenshot`: a PNG of the whole window some time after the first frame, then the
//! window closes. Beside the PNG, a JSON gives the picture's rectangle and the heads-up
//! display's lines, so the screenshot test can check the picture without guessing where it
//! is.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A screenshot to take, and how far it has got.
pub(super) struct Screenshot {
    path: PathBuf,
    /// How long after the first frame.
    after: Duration,
    first_frame: Option<Instant>,
    requested: bool,
    /// Set by eframe's screenshot callback once the files are written (or failed).
    done: Arc<Mutex<Option<Result<(), String>>>>,
    /// Why no screenshot was saved (the model failed to load, or saving failed), for the
    /// process's exit status once the window has closed.
    failure: Arc<Mutex<Option<String>>>,
}

impl Screenshot {
    pub fn new(path: PathBuf, after: Duration) -> Self {
        Self {
            path,
            after,
            first_frame: None,
            requested: false,
            done: Default::default(),
            failure: Default::default(),
        }
    }

    /// Leaves the reason in `slot` when no screenshot could be saved.
    pub fn report_failure_to(&mut self, slot: Arc<Mutex<Option<String>>>) {
        self.failure = slot;
    }

    /// Gives up: leaves `reason` for the exit status and closes the window.
    fn fail(&mut self, ctx: &egui::Context, reason: String) {
        self.requested = true;
        *self.failure.lock() = Some(reason);
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }

    /// Once per window frame: starts the clock at the first frame drawn (`picture` is
    /// where it was drawn, in points), asks for the screenshot when due, and closes the
    /// window once it is saved. A model that failed to load (`model_error`) closes the
    /// window at once: there will be no frame to take.
    pub fn step(
        &mut self,
        ctx: &egui::Context,
        picture: Option<egui::Rect>,
        hud: &[String],
        model_error: Option<&str>,
    ) {
        let outcome = self.done.lock().take();
        match outcome {
            Some(Ok(())) => {
                eprintln!("dreamwalk: saved {}", self.path.display());
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                return;
            }
            Some(Err(e)) => return self.fail(ctx, format!("screenshot failed: {e}")),
            None => {}
        }
        if let Some(error) = model_error {
            if !self.requested {
                self.fail(ctx, format!("no screenshot: {error}"));
            }
            return;
        }
        if picture.is_some() {
            self.first_frame.get_or_insert_with(Instant::now);
        }
        let due = self.first_frame.is_some_and(|t| t.elapsed() >= self.after);
        if due && !self.requested {
            self.requested = true;
            let (path, done, hud) = (self.path.clone(), self.done.clone(), hud.to_vec());
            let pixels_per_point = ctx.pixels_per_point();
            let rect = picture.map(|r| {
                [
                    r.min.x * pixels_per_point,
                    r.min.y * pixels_per_point,
                    r.max.x * pixels_per_point,
                    r.max.y * pixels_per_point,
                ]
            });
            let repaint = ctx.clone();
            ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(
                egui::ScreenshotCallback::new(move |image| {
                    *done.lock() = Some(save(&path, &image, rect, &hud));
                    repaint.request_repaint();
                }),
            ));
        }
        if self.first_frame.is_some() {
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }
}

/// Writes the screenshot as PNG (with the crate's one PNG writer,
/// [`crate::record::write_png`]), and beside it as JSON the picture's rectangle (pixels) and
/// the heads-up display's lines.
fn save(
    path: &Path,
    image: &egui::ColorImage,
    picture: Option<[f32; 4]>,
    hud: &[String],
) -> Result<(), String> {
    let at_path = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let [w, h] = image.size;
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    let frame = crate::frame::RgbaImage::from_pixels(w as u32, h as u32, rgba)
        .ok_or_else(|| "screenshot has the wrong number of pixels".to_string())?;
    crate::record::write_png(path, &frame, None).map_err(|e| at_path(&e))?;
    let json = serde_json::json!({ "width": w, "height": h, "picture": picture, "hud": hud });
    std::fs::write(path.with_extension("json"), json.to_string()).map_err(|e| at_path(&e))
}
