//! The few ISO BMFF (MP4) boxes a single H.264 track needs, for the built-in encoder.
//!
//! Layout: `ftyp`, `moov`, `mdat` for the finished file (`+faststart`, the index first), or
//! `ftyp`, `mdat`, `moov` when the index had to be appended. All samples form one chunk
//! (constant frame duration, no B-frames, so no `ctts` or edit list is needed).
//!
//! Why our own boxes and not a muxer crate (checked December 2026):
//! * `muxide` 0.2.5 keeps every encoded sample in memory until `finish` (its `SampleInfo`
//!   holds each frame's bytes) and writes nothing before then: a long 4K render would hold
//!   gigabytes, and a render killed before finishing would leave no file at all. Its
//!   `mdat` size is 32-bit, so an output past 4 GiB is refused. Its fragmented writer
//!   streams, but only video, and fragmented MP4 gives up the index-first layout players
//!   and editors open fastest.
//! * `mp4` 0.14 (no release since 2023) writes the index after the samples only.
//! * Neither brings an audio encoder: this path exists for machines without ffmpeg, and
//!   there is no well-kept pure-Rust AAC encoder, so a sound track is refused here by name
//!   either way ([`super::audio_plan`]).
//!
//! Here samples stream to the partial file as they are encoded (memory stays at one frame),
//! the `mdat` header is 64-bit, and finishing puts the index first (or appends it when the
//! disk has no room for the copy, [`super::builtin`]); a Ctrl-C'd render is finished the
//! same way, so what was made is kept.

/// Bytes of the `mdat` header: always the 64-bit form, so its length does not depend on the
/// payload's and it can be patched in place.
pub(super) const MDAT_HEADER_LEN: u64 = 16;

/// What the index describes.
pub(super) struct Track<'a> {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Size of each sample (frame) in bytes, in order.
    pub sample_sizes: &'a [u32],
    /// 1-based numbers of the key frames.
    pub sync_samples: &'a [u32],
    /// The sequence and picture parameter sets, without start codes.
    pub sps: &'a [u8],
    pub pps: &'a [u8],
    /// Stored as the movie's `©cmt` user data (ffprobe shows it as the `comment` tag).
    pub comment: Option<&'a str>,
}

/// Builds nested boxes, patching each size when the box is closed.
struct Boxes {
    buf: Vec<u8>,
    open: Vec<usize>,
}

impl Boxes {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            open: Vec::new(),
        }
    }

    fn begin(&mut self, kind: &[u8; 4]) -> &mut Self {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(kind);
        self
    }

    fn begin_full(&mut self, kind: &[u8; 4], version: u8, flags: u32) -> &mut Self {
        self.begin(kind).u32(u32::from(version) << 24 | flags)
    }

    fn end(&mut self) -> &mut Self {
        if let Some(start) = self.open.pop() {
            let size = (self.buf.len() - start) as u32;
            self.buf[start..start + 4].copy_from_slice(&size.to_be_bytes());
        }
        self
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len() + n, 0);
        self
    }

    /// A 32-bit field in version 0 boxes, 64-bit in version 1.
    fn time(&mut self, version: u8, v: u64) -> &mut Self {
        if version == 1 {
            self.u64(v)
        } else {
            self.u32(v as u32)
        }
    }

    fn matrix(&mut self) -> &mut Self {
        for v in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
            self.u32(v);
        }
        self
    }

    fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// The `ftyp` box.
pub(super) fn ftyp() -> Vec<u8> {
    let mut b = Boxes::new();
    b.begin(b"ftyp").bytes(b"isom").u32(0x200);
    for brand in [b"isom", b"iso2", b"avc1", b"mp41"] {
        b.bytes(brand);
    }
    b.end();
    b.finish()
}

/// The `mdat` header for `payload_len` bytes of samples.
pub(super) fn mdat_header(payload_len: u64) -> [u8; MDAT_HEADER_LEN as usize] {
    let mut header = [0u8; MDAT_HEADER_LEN as usize];
    header[..4].copy_from_slice(&1u32.to_be_bytes());
    header[4..8].copy_from_slice(b"mdat");
    header[8..].copy_from_slice(&(payload_len + MDAT_HEADER_LEN).to_be_bytes());
    header
}

/// The `moov` box for `track`, whose samples start at byte `payload_offset` of the file.
pub(super) fn moov(track: &Track, payload_offset: u64) -> Vec<u8> {
    let frames = track.sample_sizes.len() as u64;
    // Media time in 1/1000ths of a frame, so any fps up to 1000 is exact.
    let media_timescale = track.fps * 1000;
    let sample_delta = 1000u32;
    let media_duration = frames * u64::from(sample_delta);
    let movie_timescale = 1000u32;
    let movie_duration = frames * 1000 / u64::from(track.fps);
    let version = u8::from(media_duration > u64::from(u32::MAX));

    let mut b = Boxes::new();
    b.begin(b"moov");

    b.begin_full(b"mvhd", version, 0)
        .time(version, 0)
        .time(version, 0)
        .u32(movie_timescale)
        .time(version, movie_duration)
        .u32(0x0001_0000) // rate 1.0
        .u16(0x0100) // volume 1.0
        .zeros(10)
        .matrix()
        .zeros(24)
        .u32(2) // next track id
        .end();

    b.begin(b"trak");
    // Flags: enabled, in movie.
    b.begin_full(b"tkhd", version, 0x3)
        .time(version, 0)
        .time(version, 0)
        .u32(1) // track id
        .u32(0)
        .time(version, movie_duration)
        .zeros(8)
        .u16(0) // layer
        .u16(0) // alternate group
        .u16(0) // volume
        .u16(0)
        .matrix()
        .u32(track.width << 16)
        .u32(track.height << 16)
        .end();

    b.begin(b"mdia");
    b.begin_full(b"mdhd", version, 0)
        .time(version, 0)
        .time(version, 0)
        .u32(media_timescale)
        .time(version, media_duration)
        .u16(0x55c4) // language "und"
        .u16(0)
        .end();
    b.begin_full(b"hdlr", 0, 0)
        .u32(0)
        .bytes(b"vide")
        .zeros(12)
        .bytes(b"VideoHandler\0")
        .end();

    b.begin(b"minf");
    b.begin_full(b"vmhd", 0, 1).zeros(8).end();
    b.begin(b"dinf");
    b.begin_full(b"dref", 0, 0).u32(1);
    // Flag 1: the media data is in this file.
    b.begin_full(b"url ", 0, 1).end();
    b.end().end();

    b.begin(b"stbl");
    b.begin_full(b"stsd", 0, 0).u32(1);
    avc1(&mut b, track);
    b.end();
    b.begin_full(b"stts", 0, 0)
        .u32(1)
        .u32(frames as u32)
        .u32(sample_delta)
        .end();
    b.begin_full(b"stss", 0, 0)
        .u32(track.sync_samples.len() as u32);
    for &sample in track.sync_samples {
        b.u32(sample);
    }
    b.end();
    // One chunk holding every sample.
    b.begin_full(b"stsc", 0, 0)
        .u32(1)
        .u32(1)
        .u32(frames as u32)
        .u32(1)
        .end();
    b.begin_full(b"stsz", 0, 0).u32(0).u32(frames as u32);
    for &size in track.sample_sizes {
        b.u32(size);
    }
    b.end();
    if let Ok(offset) = u32::try_from(payload_offset) {
        b.begin_full(b"stco", 0, 0).u32(1).u32(offset).end();
    } else {
        b.begin_full(b"co64", 0, 0).u32(1).u64(payload_offset).end();
    }
    b.end(); // stbl
    b.end(); // minf
    b.end(); // mdia
    b.end(); // trak
    if let Some(comment) = track.comment {
        // QuickTime user data text: 16-bit length, 16-bit language, the UTF-8 text.
        let text = &comment.as_bytes()[..comment.len().min(u16::MAX as usize)];
        b.begin(b"udta");
        b.begin(b"\xa9cmt")
            .u16(text.len() as u16)
            .u16(0x55c4) // "und"
            .bytes(text)
            .end();
        b.end();
    }
    b.end(); // moov
    b.finish()
}

/// The `avc1` sample entry with its `avcC` decoder configuration and `colr` tag.
fn avc1(b: &mut Boxes, track: &Track) {
    b.begin(b"avc1")
        .zeros(6)
        .u16(1) // data reference index
        .zeros(16)
        .u16(track.width as u16)
        .u16(track.height as u16)
        .u32(0x0048_0000) // 72 dpi
        .u32(0x0048_0000)
        .u32(0)
        .u16(1) // frames per sample
        .zeros(32) // compressor name
        .u16(0x0018) // depth
        .u16(0xffff); // pre-defined -1

    let (profile, compatibility, level) = match track.sps {
        [_, profile, compatibility, level, ..] => (*profile, *compatibility, *level),
        _ => (66, 0, 30),
    };
    b.begin(b"avcC")
        .u8(1)
        .u8(profile)
        .u8(compatibility)
        .u8(level)
        .u8(0xff) // 4-byte NAL lengths
        .u8(0xe1) // one SPS
        .u16(track.sps.len() as u16)
        .bytes(track.sps)
        .u8(1) // one PPS
        .u16(track.pps.len() as u16)
        .bytes(track.pps);
    if matches!(profile, 100 | 110 | 122 | 144) {
        // High profiles: 4:2:0, 8-bit, no SPS extensions.
        b.u8(0xfc | 1).u8(0xf8).u8(0xf8).u8(0);
    }
    b.end();

    // BT.709 primaries, transfer and matrix, limited range: what the encoder was fed.
    b.begin(b"colr")
        .bytes(b"nclx")
        .u16(1)
        .u16(1)
        .u16(1)
        .u8(0)
        .end();
    b.end();
}
