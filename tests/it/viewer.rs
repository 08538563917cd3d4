//! The window's widgets, driven through egui_kittest (no display): typing prompts, Play,
//! every slider and choice, Pause, Stop, Record. Each check reads what reached the running
//! pipeline, not the widget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dreamwalk::app::{OutputSize, PlayState, ViewerApp, ViewerOptions};
use dreamwalk::model::{DecoderKind, Keyframe};
use dreamwalk::pipeline::{Inbetweens, Settings};
use dreamwalk::upscale::UpscaleMode;
use dreamwalk::walk::{Easing, Interp, LoopMode};
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

use crate::support::y4m::split_header;

pub(crate) fn harness() -> Harness<'static, ViewerApp> {
    let mut app = ViewerApp::headless(ViewerOptions::default());
    assert!(
        app.wait_for_model(Duration::from_secs(60)),
        "demo model loads"
    );
    Harness::builder()
        .with_size(egui::vec2(1400.0, 1000.0))
        .build_ui_state(|ui, app: &mut ViewerApp| app.show(ui, None), app)
}

/// Steps the UI until `done` holds, in real time (frames come from pipeline threads).
pub(crate) fn step_until(
    harness: &mut Harness<'_, ViewerApp>,
    what: &str,
    done: impl Fn(&ViewerApp) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(harness.state()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} (notice: {:?})",
            harness.state().notice()
        );
        harness.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    harness.step();
}

pub(crate) fn settings(harness: &Harness<'_, ViewerApp>) -> Settings {
    harness
        .state()
        .session()
        .and_then(|s| s.settings())
        .expect("the walk runs")
}

pub(crate) fn frames_shown(app: &ViewerApp) -> u64 {
    app.session()
        .and_then(|s| s.stats())
        .map_or(0, |s| s.frames_shown)
}

pub(crate) fn set_text(harness: &mut Harness<'_, ViewerApp>, label: &str, text: &str) {
    harness.get_by_label(label).focus();
    harness.run_steps(1);
    // Select all, then type over it.
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    harness.run_steps(1);
    harness.get_by_label(label).type_text(text);
    harness.run_steps(1);
    harness.key_press(egui::Key::Enter);
    harness.run_steps(2);
}

pub(crate) fn click(harness: &mut Harness<'_, ViewerApp>, button: &str) {
    harness.get_by_role_and_label(Role::Button, button).click();
    harness.run_steps(2);
}

fn play_with_prompts(harness: &mut Harness<'_, ViewerApp>) {
    set_text(harness, "Prompt A", "a red fox in snow");
    set_text(harness, "Prompt B", "a city at night");
    click(harness, "Play");
    step_until(harness, "the first frame", |app| {
        app.session().and_then(|s| s.current_frame()).is_some()
    });
}

fn choose(harness: &mut Harness<'_, ViewerApp>, combo: &str, option: &str) {
    // Rows above the combo can grow while frames play (keyframe thumbnails arrive): a click
    // aimed at the last frame's layout may miss, so open it again until the option shows.
    for _ in 0..5 {
        harness.get_by_label(combo).click();
        harness.run_steps(2);
        if harness.query_by_label(option).is_some() {
            break;
        }
    }
    harness.get_by_label(option).click();
    harness.run_steps(2);
}

pub(crate) fn set_slider(harness: &mut Harness<'_, ViewerApp>, label: &str, value: f64) {
    // The number box beside each slider (and the seed's) takes the value.
    harness
        .get_by_role_and_label(Role::SpinButton, label)
        .set_value_accesskit(value);
    harness.run_steps(2);
}

#[test]
fn typed_prompts_play_pause_and_stop_reach_the_pipeline() {
    let mut harness = harness();
    play_with_prompts(&mut harness);
    let s = settings(&harness);
    assert_eq!(
        s.endpoints.keyframes,
        vec![
            Keyframe::Prompt("a red fox in snow".to_string()),
            Keyframe::Prompt("a city at night".to_string())
        ]
    );
    assert_eq!(
        harness.state().session().unwrap().state(),
        PlayState::Playing
    );
    step_until(&mut harness, "frames to play", |app| frames_shown(app) >= 5);

    // A third keyframe and a negative prompt: new endpoints with three prompts.
    click(&mut harness, "+ keyframe");
    set_text(&mut harness, "Prompt C", "a desert");
    set_text(&mut harness, "Negative prompt", "blurry");
    let s = settings(&harness);
    assert_eq!(s.endpoints.keyframes.len(), 3);
    assert_eq!(s.endpoints.keyframes[2], Keyframe::from("a desert"));
    assert_eq!(s.endpoints.negative, "blurry");

    // An empty prompt is refused with a message, and the walk keeps its prompts.
    set_text(&mut harness, "Prompt C", " ");
    assert_eq!(
        settings(&harness).endpoints.keyframes[2],
        Keyframe::from("a desert")
    );
    let notice = harness.state().notice().unwrap_or_default().to_string();
    assert!(notice.contains("prompt C is empty"), "{notice}");

    click(&mut harness, "Pause");
    assert_eq!(
        harness.state().session().unwrap().state(),
        PlayState::Paused
    );
    // The display thread may be showing one last frame as the pause lands.
    std::thread::sleep(Duration::from_millis(300));
    let paused_at = frames_shown(harness.state());
    std::thread::sleep(Duration::from_millis(800));
    harness.run_steps(2);
    assert_eq!(
        frames_shown(harness.state()),
        paused_at,
        "paused: no new frames"
    );

    click(&mut harness, "Play");
    step_until(&mut harness, "frames after resuming", |app| {
        frames_shown(app) > paused_at
    });

    // Stop joins every pipeline thread: nothing holds the engine but the session.
    let engine = harness.state().session().unwrap().engine().clone();
    click(&mut harness, "Stop");
    assert_eq!(
        harness.state().session().unwrap().state(),
        PlayState::Stopped
    );
    assert_eq!(Arc::strong_count(&engine), 2, "the session's and ours");
}

#[test]
fn every_slider_and_choice_acts_live() {
    let mut harness = harness();
    play_with_prompts(&mut harness);

    set_slider(&mut harness, "Sampler steps", 4.0);
    assert_eq!(settings(&harness).endpoints.steps, 4);
    set_slider(&mut harness, "Guidance", 3.5);
    assert_eq!(settings(&harness).endpoints.guidance, 3.5);
    set_slider(&mut harness, "Seed", 1234.0);
    assert_eq!(settings(&harness).endpoints.seed, 1234);
    click(&mut harness, "New seed");
    assert_ne!(settings(&harness).endpoints.seed, 1234);

    set_slider(&mut harness, "Steps between keyframes", 12.0);
    assert_eq!(settings(&harness).walk.steps_between, 12);
    set_slider(&mut harness, "In-betweens", 7.0);
    assert_eq!(settings(&harness).inbetweens, Inbetweens::Fixed(7));
    harness.get_by_label("auto").click();
    harness.run_steps(2);
    assert_eq!(settings(&harness).inbetweens, Inbetweens::Auto);
    set_slider(&mut harness, "Target fps", 24.0);
    assert_eq!(settings(&harness).target_fps, 24.0);

    choose(&mut harness, "Interpolation", "lerp");
    assert_eq!(settings(&harness).walk.interp, Interp::Lerp);
    choose(&mut harness, "Easing", "linear");
    assert_eq!(settings(&harness).walk.easing, Easing::Linear);
    choose(&mut harness, "Loop", "endless");
    assert_eq!(settings(&harness).walk.loop_mode, LoopMode::Endless);
    choose(&mut harness, "Decoder", "full VAE");
    assert_eq!(settings(&harness).decoder, DecoderKind::Vae);
    choose(&mut harness, "Output size", "1080p");
    assert_eq!(settings(&harness).output_size, OutputSize::P1080.size());
    // No GPU here: the CPU path is the default and "none" can be chosen.
    assert_eq!(settings(&harness).upscale, UpscaleMode::Cpu);
    choose(&mut harness, "Upscale", "none");
    assert_eq!(settings(&harness).upscale, UpscaleMode::None);

    // The walk still plays with all of it: frames at the source size (no upscale), decoded
    // by the VAE from the new endpoints. (Frames upscaled before the change may still be in
    // the ring: wait for the new ones to come through.)
    let current_size = |app: &ViewerApp| {
        app.session()
            .and_then(|s| s.current_frame())
            .map(|f| f.image.size())
    };
    let shown = frames_shown(harness.state());
    step_until(&mut harness, "frames at the source size", |app| {
        current_size(app) == Some((1024, 576))
    });
    step_until(&mut harness, "more frames after the changes", |app| {
        frames_shown(app) > shown + 3
    });
    assert_eq!(current_size(harness.state()), Some((1024, 576)));
}

#[test]
fn record_button_writes_the_frames_shown() {
    let mut harness = harness();
    play_with_prompts(&mut harness);
    // Frames at the source size, as recorded by default (no resize on the way).
    choose(&mut harness, "Upscale", "none");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk.y4m");
    set_text(&mut harness, "Record file", out.to_str().unwrap());
    // Read before the click: the click steps the window, and frames go on meanwhile.
    let before_record = harness
        .state()
        .session()
        .and_then(|s| s.current_frame())
        .map(|f| f.index)
        .unwrap();
    click(&mut harness, "Record");
    step_until(&mut harness, "recorded frames", |app| {
        app.session()
            .and_then(|s| s.recording())
            .is_some_and(|r| r.frames >= 6)
    });
    click(&mut harness, "Stop recording");
    let notice = harness.state().notice().unwrap_or_default().to_string();
    assert!(notice.starts_with("saved"), "{notice}");
    let bytes = std::fs::read(&out).unwrap();
    let (header, frame_bytes) = split_header(&bytes);
    let header = String::from_utf8_lossy(header).into_owned();
    assert!(header.starts_with("YUV4MPEG2 W1024 H576 F30:1"), "{header}");
    assert!(header.contains("demo_model_(random_weights)"), "{header}");
    let frame_len = 6 + 1024 * 576 * 3;
    let frames = frame_bytes.len() / frame_len;
    assert_eq!(frame_bytes.len() % frame_len, 0);
    assert!(frames >= 6, "{frames} frames");
    // The walk went on while recording.
    let last_index = harness
        .state()
        .session()
        .and_then(|s| s.current_frame())
        .map(|f| f.index)
        .unwrap();
    // The first recorded frame came after the one shown before Record was pressed.
    assert!(
        last_index >= before_record + frames as u64,
        "{frames} frames recorded after frame {before_record}, but frame {last_index} is shown"
    );

    // An unwritable path is a message in the window; the walk keeps playing.
    set_text(&mut harness, "Record file", "/proc/nope/walk.mp4");
    click(&mut harness, "Record");
    let notice = harness.state().notice().unwrap_or_default().to_string();
    assert!(notice.starts_with("cannot record"), "{notice}");
    assert_eq!(
        harness.state().session().unwrap().state(),
        PlayState::Playing
    );
}

#[test]
fn record_takes_gif_and_names_what_it_cannot_write() {
    let mut harness = harness();
    let dir = tempfile::tempdir().unwrap();
    // A name no format has: the panel says so as it is typed, listing the ones it takes.
    set_text(
        &mut harness,
        "Record file",
        dir.path().join("walk.avi").to_str().unwrap(),
    );
    assert!(harness
        .query_by_label_contains("unknown recording format '.avi' (use .mp4, .webm, .gif")
        .is_some());
    play_with_prompts(&mut harness);
    choose(&mut harness, "Upscale", "none");
    let out = dir.path().join("walk.gif");
    set_text(&mut harness, "Record file", out.to_str().unwrap());
    assert!(harness
        .query_by_label_contains("unknown recording format")
        .is_none());
    click(&mut harness, "Record");
    step_until(&mut harness, "recorded frames", |app| {
        app.session()
            .and_then(|s| s.recording())
            .is_some_and(|r| r.frames >= 4)
    });
    click(&mut harness, "Stop recording");
    let notice = harness.state().notice().unwrap_or_default().to_string();
    assert!(notice.starts_with("saved"), "{notice}");
    // "saved PATH: N frames, ..."; the GIF holds exactly those.
    let frames: u64 = notice
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{notice}"));
    assert!(frames >= 4, "{notice}");
    let probe = crate::support::ffmpeg::probe_stream(&out);
    assert_eq!(probe.codec_name, "gif");
    assert_eq!((probe.width, probe.height), (1024, 576));
    assert_eq!(probe.nb_read_frames, frames);
}

#[test]
fn a_bad_model_folder_is_a_message_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = ViewerApp::headless(ViewerOptions {
        model: dreamwalk::usecase::ModelSource {
            model: Some(dir.path().display().to_string()),
            ..Default::default()
        },
        ..Default::default()
    });
    assert!(!app.wait_for_model(Duration::from_secs(60)));
    let notice = app.notice().unwrap_or_default().to_string();
    assert!(notice.contains("cannot load the model"), "{notice}");
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1400.0, 1000.0))
        .build_ui_state(|ui, app: &mut ViewerApp| app.show(ui, None), app);
    harness.run_steps(2);
    assert!(harness.query_by_label_contains("no model loaded").is_some());
}

#[test]
fn a_long_load_error_is_one_line_with_its_details_behind_a_toggle() {
    // A UNet whose weights do not fit its config: candle's shape error is long.
    let dir = tempfile::tempdir().unwrap();
    // Deep enough that the message cannot fit one line.
    let model = dir
        .path()
        .join("a-folder-with-a-long-name-".repeat(4))
        .join("model");
    crate::support::fixtures::copy_dir(&crate::support::fixtures::fixture("tiny-sd"), &model);
    let config = model.join("unet").join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["cross_attention_dim"] = serde_json::json!(48);
    std::fs::write(&config, json.to_string()).unwrap();
    let mut app = ViewerApp::headless(ViewerOptions {
        model: dreamwalk::usecase::ModelSource {
            model: Some(model.display().to_string()),
            ..Default::default()
        },
        ..Default::default()
    });
    assert!(!app.wait_for_model(Duration::from_secs(60)));
    let notice = app.notice().unwrap_or_default().to_string();
    assert!(notice.contains("cannot load the model"), "{notice}");
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1400.0, 1000.0))
        .build_ui_state(|ui, app: &mut ViewerApp| app.show(ui, None), app);
    harness.run_steps(2);
    // One line shows; the shapes at the message's end are behind the closed toggle.
    // In the notice and in the picture's place.
    assert_eq!(
        harness
            .query_all_by_label_contains("cannot load the model")
            .count(),
        2
    );
    assert!(harness.query_by_label_contains("got: [32, 32]").is_none());
    harness.get_by_label("details").click();
    harness.run_steps(2);
    assert!(harness.query_by_label_contains("got: [32, 32]").is_some());
}

#[test]
fn a_prompt_past_77_tokens_is_a_warning_in_the_window() {
    let mut harness = harness();
    // The demo model's tokenizer makes one token of each byte: 120 of them.
    set_text(&mut harness, "Prompt A", &"ab ".repeat(40));
    set_text(&mut harness, "Prompt B", "a city at night");
    click(&mut harness, "Play");
    let notice = harness.state().notice().unwrap_or_default().to_string();
    assert!(
        notice.contains("prompt 1") && notice.contains("77"),
        "{notice}"
    );
    assert_eq!(
        harness.state().session().unwrap().state(),
        PlayState::Playing,
        "a warning, not a refusal"
    );
}

#[test]
fn pictures_join_the_walk_by_button_and_by_drop_and_a_bad_one_is_a_notice() {
    let dir = tempfile::tempdir().unwrap();
    let picture = |name: &str, shade: u8| {
        let path = dir.path().join(name);
        image::RgbaImage::from_fn(48, 32, |x, y| {
            image::Rgba([x as u8 * 5, y as u8 * 7, shade, 255])
        })
        .save(&path)
        .unwrap();
        path
    };
    let (photo, dropped) = (picture("photo.png", 40), picture("dropped.png", 200));
    let mut harness = harness();
    play_with_prompts(&mut harness);
    let generation = |app: &ViewerApp| app.session().and_then(|s| s.stats()).map(|s| s.generation);
    let before = generation(harness.state());

    // "+ image" with a file: the third keyframe is the picture, used as it is.
    set_text(&mut harness, "Image file", photo.to_str().unwrap());
    click(&mut harness, "+ image");
    let s = settings(&harness);
    assert_eq!(s.endpoints.keyframes.len(), 3);
    let Keyframe::Image(image) = &s.endpoints.keyframes[2] else {
        panic!("keyframe C is {:?}", s.endpoints.keyframes[2]);
    };
    assert_eq!(image.path, photo);
    assert_eq!((image.pixels.width, image.pixels.height), (48, 32));
    assert_eq!(image.strength, 0.0);
    // Its row in the panel (with its thumbnail), and the image settings, which act live.
    assert!(harness.query_by_label("Image C").is_some());
    let thumbnail = harness.get_by_role_and_label(Role::Image, "thumbnail of photo.png");
    // 48x32 drawn 40 points tall: 60 x 40.
    let rect = thumbnail.rect();
    assert_eq!((rect.width().round(), rect.height().round()), (60.0, 40.0));
    set_slider(&mut harness, "Image strength", 0.5);
    let strength = |h: &Harness<'_, ViewerApp>| match &settings(h).endpoints.keyframes[2] {
        Keyframe::Image(image) => image.strength,
        other => panic!("{other:?}"),
    };
    assert_eq!(strength(&harness), 0.5);
    // The walk samples the new keyframes and plays them.
    step_until(&mut harness, "keyframes with the picture", |app| {
        generation(app) > before
    });

    // A file that cannot be read: a notice naming it, the walk plays on unchanged.
    set_text(&mut harness, "Image file", "/nonexistent/photo.png");
    click(&mut harness, "+ image");
    let notice = harness.state().notice().unwrap_or_default().to_string();
    assert!(
        notice.contains("cannot use the image") && notice.contains("/nonexistent/photo.png"),
        "{notice}"
    );
    assert_eq!(settings(&harness).endpoints.keyframes.len(), 3);
    assert_eq!(
        harness.state().session().unwrap().state(),
        PlayState::Playing
    );
    let shown = frames_shown(harness.state());
    step_until(&mut harness, "frames after the bad file", |app| {
        frames_shown(app) > shown + 2
    });

    // A file dropped on the window: the fourth keyframe.
    harness
        .input_mut()
        .dropped_files
        .push(Arc::new(DroppedPicture(dropped.clone())));
    harness.run_steps(2);
    let s = settings(&harness);
    assert_eq!(s.endpoints.keyframes.len(), 4);
    assert!(matches!(&s.endpoints.keyframes[3], Keyframe::Image(image) if image.path == dropped));
    assert!(harness.query_by_label("Image D").is_some());
    assert!(harness
        .query_by_role_and_label(Role::Image, "thumbnail of dropped.png")
        .is_some());
}

/// A file dropped on the window, as eframe hands it to egui.
#[derive(Debug)]
struct DroppedPicture(std::path::PathBuf);

impl egui::DroppedFile for DroppedPicture {
    fn path(&self) -> &std::path::Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn a_lora_strength_slider_reloads_the_model_and_the_walk_plays_on() {
    let dir = tempfile::tempdir().unwrap();
    let lora = crate::lora::peft_file(dir.path(), &crate::lora::lora_tensors());
    let mut app = ViewerApp::headless(ViewerOptions {
        model: dreamwalk::usecase::ModelSource {
            model: Some(
                crate::support::fixtures::fixture("tiny-sd")
                    .display()
                    .to_string(),
            ),
            loras: vec![dreamwalk::model::lora::LoraSpec {
                path: lora,
                strength: 0.5,
            }],
            ..Default::default()
        },
        ..Default::default()
    });
    assert!(app.wait_for_model(Duration::from_secs(60)), "tiny-sd loads");
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1400.0, 1000.0))
        .build_ui_state(|ui, app: &mut ViewerApp| app.show(ui, None), app);
    let engine_name = |app: &ViewerApp| app.session().map(|s| s.engine().name());
    assert!(
        engine_name(harness.state()).is_some_and(|n| n.contains("peft.safetensors x0.5")),
        "{:?}",
        engine_name(harness.state())
    );
    play_with_prompts(&mut harness);
    let generation = |app: &ViewerApp| app.session().and_then(|s| s.stats()).map(|s| s.generation);
    assert!(generation(harness.state()).is_some());

    // Let go of the slider at 0.2: the model loads again with the LoRA at 0.2, and the walk
    // that was playing plays again, on keyframes sampled with the new weights.
    set_slider(&mut harness, "LoRA peft", 0.2);
    step_until(&mut harness, "the model with the LoRA at 0.2", |app| {
        engine_name(app).is_some_and(|n| n.contains("peft.safetensors x0.2"))
    });
    step_until(&mut harness, "the walk to play again", |app| {
        app.session()
            .is_some_and(|s| s.state() == PlayState::Playing)
            && app.session().and_then(|s| s.current_frame()).is_some()
    });
    let s = settings(&harness);
    assert_eq!(s.endpoints.keyframes.len(), 2, "the prompts are kept");
}

#[test]
fn prompt_rows_show_their_keyframe_as_sampled_and_lose_it_when_edited() {
    let mut harness = harness();
    play_with_prompts(&mut harness);
    let thumbnails = |app: &ViewerApp| app.session().and_then(|s| s.keyframe_thumbnails());
    step_until(&mut harness, "the keyframe thumbnails", |app| {
        thumbnails(app).is_some_and(|t| t.keyframes == settings_of(app).endpoints.keyframes)
    });
    let made = thumbnails(harness.state()).unwrap();
    assert_eq!(made.images.len(), 2);
    for (letter, image) in ["A", "B"].iter().zip(&made.images) {
        let label = format!("thumbnail of keyframe {letter}");
        let shown = harness.get_by_role_and_label(Role::Image, &label);
        // Drawn 40 points tall, the keyframe's own shape.
        let rect = shown.rect();
        let width = 40.0 * image.width as f32 / image.height as f32;
        assert_eq!(
            (rect.width().round(), rect.height().round()),
            (width.round(), 40.0)
        );
        assert!(image.width.max(image.height) <= 96);
    }
    // Typing another prompt into row B (not yet applied): its picture is not that prompt's.
    harness.get_by_label("Prompt B").focus();
    harness.run_steps(1);
    harness.get_by_label("Prompt B").type_text(" in the rain");
    harness.run_steps(2);
    assert!(harness
        .query_by_role_and_label(Role::Image, "thumbnail of keyframe B")
        .is_none());
    assert!(harness
        .query_by_role_and_label(Role::Image, "thumbnail of keyframe A")
        .is_some());
}

fn settings_of(app: &ViewerApp) -> Settings {
    app.session()
        .and_then(|s| s.settings())
        .expect("the walk runs")
}
