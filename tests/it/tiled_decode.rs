//! Decoding by tiles (the VAE) and row bands (TAESD) gives the whole-image decode's values;
//! the chunked attention the tiled VAE runs gives the plain one's; the automatic choice
//! tiles exactly when the whole image would not fit its budget.

use candle_core::Tensor;
use dreamwalk::model::{kernels, AutoencoderKlConfig, TaesdDecoder, Tiling, VaeDecoder};

use crate::support::fixtures::{fixture, max_abs_diff, max_byte_diff, random};

/// Tiled and whole decodes sum the same products in another order (Winograd tiles fall
/// elsewhere in a crop, GroupNorm statistics are merged from tiles): float rounding, ~1e-6
/// on outputs of magnitude ~1-5. 1e-3 is the bound; a tile normalised with its own
/// statistics instead of the image's is off by 1e-2 or more.
const TILED_TOL: f32 = 1e-3;

fn vae_kl() -> VaeDecoder {
    VaeDecoder::load(&fixture("vae_kl"), &candle_core::Device::Cpu).unwrap()
}

/// Decodes `z` whole and by `tile`-latent tiles, with no checkpoints (every GroupNorm a pass
/// from the latent level) and with room for all of them; returns the largest differences.
fn tiled_vs_whole(vae: &VaeDecoder, z: &Tensor, tile: usize) -> [f32; 2] {
    let whole = vae.decode_raw_with(z, Tiling::Off).unwrap();
    [0, u64::MAX].map(|budget_bytes| {
        let tiling = Tiling::Tiles { tile, budget_bytes };
        let (_, _, h, w) = z.dims4().unwrap();
        let plan = vae.plan(h, w, tiling);
        assert!(plan.is_tiled());
        let tiled = vae.decode_raw_with(z, tiling).unwrap();
        let diff = max_abs_diff(&tiled, &whole);
        println!("{:?} {plan}: max diff {diff:e}", z.dims());
        diff
    })
}

#[test]
fn vae_tiles_equal_the_whole_image_decode() {
    let vae = vae_kl();
    // 4 x 4 tiles of 16 and 4 x 7 tiles of 24 latents; 96x160 as the issue asks.
    for (h, w, tile, seed) in [(64, 64, 16, 1), (96, 160, 24, 2)] {
        let z = random(&[1, 4, h, w], seed, 1.0, 0.0);
        for diff in tiled_vs_whole(&vae, &z, tile) {
            assert!(
                diff <= TILED_TOL,
                "{h}x{w} in tiles of {tile}: max diff {diff}"
            );
        }
    }
}

#[test]
fn vae_tiles_of_a_deeper_decoder_equal_the_whole_image_decode() {
    // Three blocks (two upsamplers, as the x4 upscaler's VAE), a shortcut in the last
    // block, sizes that no tile divides: checkpoints at 1x and 2x, halos across two
    // upsamplings.
    let cfg = AutoencoderKlConfig {
        block_out_channels: vec![16, 32, 32],
        layers_per_block: 1,
        norm_num_groups: 8,
        ..AutoencoderKlConfig::stable_diffusion()
    };
    let vae = VaeDecoder::random(&cfg, 7).unwrap();
    let z = random(&[1, 4, 37, 53], 3, 1.0, 0.0);
    for diff in tiled_vs_whole(&vae, &z, 10) {
        assert!(diff <= TILED_TOL, "max diff {diff}");
    }
}

#[test]
fn vae_auto_tiles_only_past_its_budget_and_keeps_the_values() {
    let vae = vae_kl();
    let (h, w) = (48, 40);
    let whole_bytes = vae.whole_image_bytes(h, w);
    let roomy = Tiling::Auto {
        budget_bytes: whole_bytes,
    };
    assert!(!vae.plan(h, w, roomy).is_tiled());
    let tight = Tiling::Auto {
        budget_bytes: whole_bytes / 4,
    };
    let plan = vae.plan(h, w, tight);
    println!("whole {whole_bytes} B; at a quarter of it: {plan}");
    assert!(plan.is_tiled());
    assert!(plan.tile().is_some_and(|t| t < h.max(w)));
    let z = random(&[1, 4, h, w], 5, 1.0, 0.0);
    let mut auto = vae_kl();
    auto.set_tiling(tight);
    let diff = max_abs_diff(
        &auto.decode_raw(&z).unwrap(),
        &vae.decode_raw_with(&z, Tiling::Off).unwrap(),
    );
    assert!(diff <= TILED_TOL, "max diff {diff}");
}

#[test]
fn zero_tile_is_refused_by_name() {
    let vae = vae_kl();
    let z = random(&[1, 4, 8, 8], 6, 1.0, 0.0);
    let tiling = Tiling::Tiles {
        tile: 0,
        budget_bytes: 0,
    };
    let err = vae.decode_raw_with(&z, tiling).unwrap_err().to_string();
    assert!(err.contains("tile"), "{err}");
    let taesd = TaesdDecoder::load(&fixture("taesd/decoder.safetensors")).unwrap();
    let err = taesd.decode_with(&z, tiling).unwrap_err().to_string();
    assert!(err.contains("tile"), "{err}");
}

#[test]
fn chunked_attention_equals_the_plain_one() {
    let (tokens, c) = (300, 40);
    let q = random(&[tokens, c], 11, 1.5, 0.0);
    let k = random(&[tokens, c], 12, 1.5, 0.0);
    let v = random(&[tokens, c], 13, 1.0, 0.0);
    let plain = kernels::attention(&q, &k, &v, tokens).unwrap();
    // Blocks that divide the tokens and blocks that do not; one key block and many (the
    // online softmax rescales its running sums when a later block holds a larger score).
    for (query_rows, key_rows) in [(1, 1), (7, 64), (64, 29), (300, 300), (128, 512)] {
        let chunked = kernels::attention_chunked(&q, &k, &v, query_rows, key_rows).unwrap();
        let diff = max_abs_diff(&chunked, &plain);
        // Weighted means of O(1) values summed in another order: ~1e-7.
        println!("{query_rows} x {key_rows}: max diff {diff:e}");
        assert!(diff < 1e-5, "{query_rows} x {key_rows}: max diff {diff}");
    }
}

#[test]
fn taesd_bands_equal_the_whole_image_decode() {
    let taesd = TaesdDecoder::load(&fixture("taesd/decoder.safetensors")).unwrap();
    // 8 bands of 8 rows, and 6 bands of 16 rows over 96 (not dividing the halo).
    for (h, w, band, seed) in [(64, 64, 8, 21), (96, 40, 16, 22)] {
        let z = random(&[1, 4, h, w], seed, 1.0, 0.0);
        let tiling = Tiling::Tiles {
            tile: band,
            budget_bytes: 0,
        };
        assert_eq!(taesd.bands(h, w, tiling), Some(band));
        let whole = taesd.decode_with(&z, Tiling::Off).unwrap();
        let banded = taesd.decode_with(&z, tiling).unwrap();
        let diff = max_abs_diff(&banded, &whole);
        println!("TAESD {h}x{w} in bands of {band}: max diff {diff:e}");
        assert!(diff <= TILED_TOL, "max diff {diff}");
        // The RGBA path: the same bytes but where a value sits on a rounding boundary.
        let whole = taesd.decode_rgba_with(&z, Tiling::Off).unwrap();
        let banded = taesd.decode_rgba_with(&z, tiling).unwrap();
        assert!(max_byte_diff(&banded[0], &whole[0]) <= 1);
    }
}

#[test]
fn taesd_auto_bands_only_past_its_budget() {
    let taesd = TaesdDecoder::load(&fixture("taesd/decoder.safetensors")).unwrap();
    let (h, w) = (270, 480);
    let whole = taesd.whole_image_bytes(h, w);
    assert_eq!(
        taesd.bands(
            h,
            w,
            Tiling::Auto {
                budget_bytes: whole
            }
        ),
        None
    );
    let band = taesd.bands(
        h,
        w,
        Tiling::Auto {
            budget_bytes: 1 << 30,
        },
    );
    println!("4K TAESD: whole {whole} B, bands of {band:?} rows within 1 GiB");
    let band = band.expect("banded under 1 GiB");
    assert!(taesd.band_bytes(band, w) < 1 << 30);
}
