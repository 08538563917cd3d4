//! Frames that stay on the GPU: TAESD decodes into a texture ([`GpuFrame`]), in-betweens of
//! two such frames are blended by the present shader as it upscales, and nothing is copied
//! to the CPU unless a stage needs bytes (recording, the CPU upscaler). Every path must give
//! the CPU pipeline's pixels.
//!
//! Needs a GPU adapter (on machines without one, Debian's `mesa-vulkan-drivers`); frames are
//! small because a software adapter is slow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use dreamwalk::app::Session;
use dreamwalk::frame::{FrameError, FrameImage, RgbaImage};
use dreamwalk::gpu::{
    create_output_texture, read_texture, BicubicSource, BicubicUpscaler, DecodedFrames, GpuContext,
    GpuDecodedEngine, GpuError, GpuFrame, GpuTaesd, OUTPUT_FORMAT,
};
use dreamwalk::model::{DecoderKind, EndpointRequest, Engine, StableDiffusion};
use dreamwalk::pipeline::{Frame, Inbetweens, Pipeline, PipelineOptions, RingPolicy, Settings};
use dreamwalk::record::RecordOptions;
use dreamwalk::upscale::{BicubicResizer, UpscaleMode};
use dreamwalk::walk::{LoopMode, WalkSettings};

use crate::support::fixtures::max_byte_diff;
use crate::support::gpu::{gpu_context as context, small_latents as latents, texture};
use crate::support::images::{png_files, read_png_rgba};

fn gpu_taesd(ctx: &GpuContext, model: &StableDiffusion) -> GpuTaesd {
    GpuTaesd::new(ctx, model.taesd().expect("the demo model has TAESD")).expect("GPU TAESD")
}

/// `image` drawn by the present path (`render_frame`) at `size`, read back.
fn present(
    ctx: &GpuContext,
    upscaler: &mut BicubicUpscaler,
    image: &FrameImage,
    size: (u32, u32),
) -> RgbaImage {
    let target = create_output_texture(&ctx.device, size.0, size.1);
    let view = target.create_view(&Default::default());
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    upscaler
        .render_frame(&ctx.device, &ctx.queue, &mut encoder, image, &view)
        .expect("render");
    ctx.queue.submit([encoder.finish()]);
    read_texture(ctx, &target).expect("read the output back")
}

#[test]
fn a_decoded_frame_stays_on_the_gpu_until_read_back() {
    let ctx = context();
    let model = StableDiffusion::demo();
    let gpu = gpu_taesd(&ctx, &model);
    let latents = latents(1);
    let frame = gpu.decode_frame(&latents).expect("decode to a texture");
    assert_eq!(frame.size(), (96, 64));
    assert!(!frame.was_read_back());

    let got = frame.to_cpu().expect("read back");
    assert!(frame.was_read_back());
    let expected = model.decode(&latents, DecoderKind::Taesd).expect("CPU");
    let diff = max_byte_diff(&got, &expected);
    assert!(diff <= 1, "GPU frame and CPU TAESD differ by {diff}");
    // Read back once: later readers share the bytes.
    assert!(Arc::ptr_eq(&got, &frame.to_cpu().unwrap()));

    let batch = Tensor::zeros((2, 4, 8, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        gpu.decode_frame(&batch),
        Err(GpuError::BadInput(_))
    ));
}

#[test]
fn the_present_shader_draws_gpu_frames_and_inbetweens_like_the_cpu() {
    let ctx = context();
    let model = StableDiffusion::demo();
    let gpu = gpu_taesd(&ctx, &model);
    let a = Arc::new(gpu.decode_frame(&latents(2)).unwrap());
    let b = Arc::new(gpu.decode_frame(&latents(3)).unwrap());
    let mut upscaler = BicubicUpscaler::new(&ctx.device, OUTPUT_FORMAT);
    // Not a whole scale on either side, so every filter tap counts.
    let size = (250, 171);
    let k = 3;
    let mut images = vec![FrameImage::Gpu(a.clone())];
    images.extend((0..k).map(|j| FrameImage::GpuInbetween {
        prev: a.clone(),
        next: b.clone(),
        j,
        k,
    }));
    images.push(FrameImage::Gpu(b.clone()));
    let drawn: Vec<RgbaImage> = images
        .iter()
        .map(|image| present(&ctx, &mut upscaler, image, size))
        .collect();
    assert!(
        !a.was_read_back() && !b.was_read_back(),
        "drawing must not copy frames to the CPU"
    );

    // The CPU pipeline: blend the bytes, then the CPU bicubic.
    let mut resizer = BicubicResizer::new();
    for (i, (image, got)) in images.iter().zip(&drawn).enumerate() {
        let expected = resizer.resize(&image.to_cpu().unwrap(), size.0, size.1);
        let diff = max_byte_diff(got, &expected);
        assert!(diff <= 1, "frame {i}: shader and CPU differ by {diff}");
    }
    // The in-betweens differ from both ends (the blend happened).
    assert!(max_byte_diff(&drawn[2], &drawn[0]) > 2);
    assert!(max_byte_diff(&drawn[2], &drawn[4]) > 2);

    // A CPU frame is uploaded; a frame of another device is read back and uploaded.
    let cpu_frame: FrameImage = model
        .decode(&latents(2), DecoderKind::Taesd)
        .unwrap()
        .into();
    let got = present(&ctx, &mut upscaler, &cpu_frame, size);
    assert!(max_byte_diff(&got, &drawn[0]) <= 1);
    // (A second device of the same wgpu instance: wgpu tells devices apart by an id that
    // is unique only within an instance.)
    let (device, queue) =
        pollster::block_on(ctx.adapter.request_device(&Default::default())).expect("device");
    let other_taesd = GpuTaesd::with_device(&device, &queue, model.taesd().unwrap()).unwrap();
    assert!(device != ctx.device);
    let elsewhere = FrameImage::Gpu(Arc::new(other_taesd.decode_frame(&latents(3)).unwrap()));
    let got = present(&ctx, &mut upscaler, &elsewhere, size);
    assert!(max_byte_diff(&got, &drawn[4]) <= 1);
}

#[test]
fn bad_gpu_sources_are_errors() {
    let ctx = context();
    let model = StableDiffusion::demo();
    let gpu = gpu_taesd(&ctx, &model);
    let a = gpu.decode_frame(&latents(4)).unwrap();
    let small = gpu
        .decode_frame(&latents(5).narrow(3, 0, 8).unwrap())
        .unwrap();
    assert_eq!(small.size(), (64, 64));
    let mut upscaler = BicubicUpscaler::new(&ctx.device, OUTPUT_FORMAT);
    let target = create_output_texture(&ctx.device, 128, 128);
    let view = target.create_view(&Default::default());
    let unorm = texture(
        &ctx.device,
        (96, 64),
        wgpu::TextureFormat::Rgba8Unorm,
        wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_SRC,
    );
    let sources = [
        (
            BicubicSource::Inbetween {
                prev: a.texture(),
                next: small.texture(),
                j: 0,
                k: 1,
            },
            "frames of two sizes",
        ),
        (
            BicubicSource::Inbetween {
                prev: a.texture(),
                next: a.texture(),
                j: 1,
                k: 1,
            },
            "in-between 1 of 1",
        ),
        (BicubicSource::Texture(&unorm), "a unorm texture"),
    ];
    for (source, what) in sources {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let result = upscaler.render_from(&ctx.device, &ctx.queue, &mut encoder, source, &view);
        assert!(matches!(result, Err(GpuError::BadInput(_))), "{what}");
    }
    assert!(matches!(
        GpuFrame::new(unorm, &ctx.device, &ctx.queue),
        Err(FrameError::BadTarget(_))
    ));
    // Pairing frames for an in-between checks the same before anything is drawn.
    let (a, small) = (
        FrameImage::Gpu(Arc::new(a)),
        FrameImage::Gpu(Arc::new(small)),
    );
    assert!(FrameImage::inbetween(&a, &small, 0, 1).is_err());
    assert!(FrameImage::inbetween(&a, &a, 2, 2).is_err());
    assert!(FrameImage::inbetween(&a, &a, 0, 1).is_ok());
}

fn settings(upscale: UpscaleMode) -> Settings {
    Settings {
        endpoints: EndpointRequest {
            keyframes: vec!["a red fox".into(), "a lighthouse".into()],
            negative: String::new(),
            seed: 3,
            seed_per_keyframe: false,
            steps: 2,
            guidance: 1.0,
            image_size: (128, 64),
            init_latents: None,
        },
        walk: WalkSettings {
            steps_between: 3,
            loop_mode: LoopMode::Once,
            ..Default::default()
        },
        decoder: DecoderKind::Taesd,
        inbetweens: Inbetweens::Fixed(2),
        target_fps: 30.0,
        upscale,
        output_size: (200, 100),
        diffuse: 0,
    }
}

/// Every frame of a once-through walk, in the order the ring gives them.
fn walk(engine: Arc<dyn Engine>, upscale: UpscaleMode) -> Vec<Arc<Frame>> {
    let options = PipelineOptions {
        policy: RingPolicy::Record,
        stop_at_end: true,
        ..Default::default()
    };
    let pipeline = Pipeline::start(engine, settings(upscale), options);
    let frames: Vec<_> = std::iter::from_fn(|| pipeline.ring().pop()).collect();
    let stats = pipeline.stats_snapshot();
    assert!(stats.last_error.is_none(), "{:?}", stats.last_error);
    pipeline.shutdown();
    frames
}

fn stay_on_gpu(ctx: &GpuContext, cpu: &Arc<dyn Engine>) -> Arc<dyn Engine> {
    let engine = GpuDecodedEngine::new(cpu.clone(), &ctx.device, &ctx.queue, ctx.adapter_name())
        .expect("GPU decoder")
        .with_frames(DecodedFrames::StayOnGpu);
    assert!(engine
        .decoder_description(DecoderKind::Taesd)
        .ends_with("frames stay there"));
    Arc::new(engine)
}

#[test]
fn a_walk_decoded_on_the_gpu_keeps_its_frames_there_in_order() {
    let ctx = context();
    let cpu: Arc<dyn Engine> = Arc::new(StableDiffusion::demo());
    let on_gpu = walk(stay_on_gpu(&ctx, &cpu), UpscaleMode::Gpu);
    let on_cpu = walk(cpu.clone(), UpscaleMode::Gpu);
    // Once from A to B: 4 decoded frames, 2 in-betweens after each but the first.
    assert_eq!(on_gpu.len(), 4 + 3 * 2);
    assert_eq!(on_gpu.len(), on_cpu.len());
    for (i, frame) in on_gpu.iter().enumerate() {
        assert_eq!(frame.index, i as u64);
        match (&frame.image, frame.source.inbetween) {
            (FrameImage::Gpu(f), None) => assert!(!f.was_read_back(), "frame {i} was copied"),
            (FrameImage::GpuInbetween { prev, next, j, k }, Some(inbetween)) => {
                assert_eq!((*j, *k), inbetween);
                assert!(!prev.was_read_back() && !next.was_read_back());
            }
            (image, inbetween) => panic!("frame {i}: {image:?} for in-between {inbetween:?}"),
        }
    }
    for (i, (g, c)) in on_gpu.iter().zip(&on_cpu).enumerate() {
        assert!(!c.image.is_on_gpu());
        assert_eq!(g.source.inbetween, c.source.inbetween);
        let diff = max_byte_diff(&g.image.to_cpu().unwrap(), &c.image.to_cpu().unwrap());
        assert!(
            diff <= 1,
            "frame {i}: GPU and CPU pipelines differ by {diff}"
        );
    }

    // The CPU upscaler reads frames back: its output is the CPU pipeline's.
    let upscaled_gpu = walk(stay_on_gpu(&ctx, &cpu), UpscaleMode::Cpu);
    let upscaled_cpu = walk(cpu, UpscaleMode::Cpu);
    assert_eq!(upscaled_gpu.len(), upscaled_cpu.len());
    for (i, (g, c)) in upscaled_gpu.iter().zip(&upscaled_cpu).enumerate() {
        assert!(!g.image.is_on_gpu());
        assert_eq!(g.image.size(), (200, 100));
        let diff = max_byte_diff(&g.image.to_cpu().unwrap(), &c.image.to_cpu().unwrap());
        assert!(diff <= 1, "upscaled frame {i} differs by {diff}");
    }
}

#[test]
fn recording_reads_gpu_frames_back_as_they_are_shown() {
    let ctx = context();
    let cpu: Arc<dyn Engine> = Arc::new(StableDiffusion::demo());
    let reference = walk(cpu.clone(), UpscaleMode::Gpu);

    let mut session = Session::new(stay_on_gpu(&ctx, &cpu));
    let mut settings = settings(UpscaleMode::Gpu);
    settings.target_fps = 60.0;
    session.play(settings, Box::new(|_: &Arc<Frame>| {}));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk");
    session
        .start_recording(&out, RecordOptions::default())
        .expect("start recording a PNG sequence");
    let deadline = Instant::now() + Duration::from_secs(300);
    while session.recording().map_or(0, |r| r.frames) < 6 {
        assert!(Instant::now() < deadline, "no frames recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    let summary = session
        .stop_recording()
        .expect("recording")
        .expect("written");
    session.stop();
    eprintln!("{summary}");

    let files = png_files(&out);
    assert!(files.len() >= 6, "{} frames written", files.len());
    // The recording tap sees each frame once, in order (a repeat on underrun is not a new
    // frame): the files are consecutive frames of the walk from where Record was pressed.
    let recorded: Vec<RgbaImage> = files.iter().map(|p| read_png_rgba(p)).collect();
    let start = reference
        .iter()
        .position(|f| max_byte_diff(&f.image.to_cpu().unwrap(), &recorded[0]) <= 1)
        .expect("the first recorded frame is a frame of the walk");
    for (i, image) in recorded.iter().enumerate() {
        let expected = reference
            .get(start + i)
            .unwrap_or_else(|| panic!("recorded frame {i} is past the walk's end"));
        let diff = max_byte_diff(image, &expected.image.to_cpu().unwrap());
        assert!(
            diff <= 1,
            "recorded frame {i} differs from walk frame {} by {diff}",
            start + i
        );
    }
}
