//! Replay: a directory of JPEG, PNG, BMP or WebP frames, in file-name order, optionally
//! paced and looped.
//!
//! Bad files (truncated, empty, not an image) are skipped: `next_frame` returns
//! [`SourceError::BadFrame`] for each, the pipeline warns and counts it, and the stream
//! goes on with the next file.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{FrameSource, Next, SourceError, pacing::Pacer};
use crate::{
    codec::{self, FrameDecoder},
    frame::Frame,
};

/// Validated settings of a replay source.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    pub dir: PathBuf,
    /// Frames per second to pace at; 0 = as fast as the pipeline goes.
    pub fps: f32,
    /// Start over after the last file.
    pub looping: bool,
}

pub struct ReplaySource {
    config: ReplayConfig,
    files: Vec<PathBuf>,
    next: usize,
    seq: u64,
    /// `seq` when the current pass over the files began.
    pass_began_at: u64,
    /// Read buffer, reused across files.
    bytes: Vec<u8>,
    pacer: Pacer,
    decoder: FrameDecoder,
}

/// File extensions replay picks up (case-insensitive).
const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

impl ReplaySource {
    pub fn open(config: ReplayConfig) -> Result<Self, SourceError> {
        let files = list_frames(&config.dir)?;
        let pacer = Pacer::new(config.fps);
        Ok(Self {
            config,
            files,
            next: 0,
            seq: 0,
            pass_began_at: 0,
            bytes: Vec::new(),
            pacer,
            decoder: FrameDecoder::full_size(),
        })
    }

    /// Decode with `decoder` (e.g. [`FrameDecoder::fitting`] the model input).
    pub fn decoding_with(mut self, decoder: FrameDecoder) -> Self {
        self.decoder = decoder;
        self
    }
}

fn list_frames(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| SourceError::Fatal(format!("replay directory {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            let image = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
            if image && !p.is_file() {
                tracing::warn!(file = %p.display(), "replay: skipped: not a regular file (a directory, a link to nothing, a device or a pipe)");
            }
            image && p.is_file()
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(SourceError::Fatal(format!(
            "replay directory {} holds no .jpg, .jpeg, .png, .bmp or .webp files",
            dir.display()
        )));
    }
    Ok(files)
}

impl FrameSource for ReplaySource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Next, SourceError> {
        if self.next >= self.files.len() {
            if !self.config.looping {
                return Ok(Next::End);
            }
            // Looping over files none of which decodes would spin for ever.
            if self.seq == self.pass_began_at {
                return Err(SourceError::Fatal(format!(
                    "replay directory {}: not one of its {} files could be read as an image in a whole pass (each is named above); put frames there, or set loop = false",
                    self.config.dir.display(),
                    self.files.len()
                )));
            }
            self.pass_began_at = self.seq;
            self.next = 0;
        }
        self.next += 1;
        self.pacer.wait();
        let path = &self.files[self.next - 1];

        let bad = |reason: String| SourceError::BadFrame {
            path: path.clone(),
            reason,
        };
        self.bytes.clear();
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        // Never read more than an image within the size limit can need: a file can be
        // anything (a video dropped into the directory, a runaway log).
        let limit = self.decoder.max_file_bytes();
        let len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
        if len > limit {
            return Err(SourceError::FrameTooLarge {
                path: path.clone(),
                reason: format!(
                    "the file holds {len} bytes, more than an image of [pipeline] max_frame_pixels needs ({limit})"
                ),
            });
        }
        std::io::Read::read_to_end(&mut std::io::Read::take(file, limit), &mut self.bytes)
            .map_err(|e| bad(e.to_string()))?;

        frame.clear();
        self.decoder
            .decode_into(&self.bytes, frame)
            .map_err(|e| SourceError::undecodable(path.clone(), e))?;
        if codec::is_jpeg(&self.bytes) {
            frame.encoded.extend_from_slice(&self.bytes);
        }
        frame.seq = self.seq;
        self.seq += 1;
        frame.captured_at = SystemTime::now();
        if let Some(name) = path.file_name() {
            frame.origin.push_str(&name.to_string_lossy());
        }
        frame.truth = None;
        Ok(Next::Frame)
    }

    fn describe(&self) -> String {
        format!(
            "replay {} ({} files{})",
            self.config.dir.display(),
            self.files.len(),
            if self.config.looping { ", looping" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replay of `dir` as fast as it goes.
    fn open(dir: &Path, looping: bool) -> Result<ReplaySource, SourceError> {
        ReplaySource::open(ReplayConfig {
            dir: dir.into(),
            fps: 0.0,
            looping,
        })
    }

    fn write_jpeg(path: &Path, w: u32, h: u32) {
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        codec::encode_jpeg(&rgb, w, h, 90, &mut out).expect("encode");
        std::fs::write(path, out).expect("write");
    }

    #[test]
    fn reads_in_name_order_skips_bad_files_and_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_jpeg(&dir.path().join("b.jpg"), 32, 24);
        write_jpeg(&dir.path().join("a.jpg"), 16, 8);
        std::fs::write(dir.path().join("c.jpg"), b"").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"ignored").expect("write");
        let mut source = open(dir.path(), false).expect("open");
        assert_eq!(source.files.len(), 3);
        let mut frame = Frame::with_capacity(32, 24);
        assert_eq!(source.next_frame(&mut frame).expect("a"), Next::Frame);
        assert_eq!(
            (frame.width, frame.height, frame.origin.as_str()),
            (16, 8, "a.jpg")
        );
        assert!(
            !frame.encoded.is_empty(),
            "JPEG bytes are kept for the spool"
        );
        assert_eq!(source.next_frame(&mut frame).expect("b"), Next::Frame);
        assert_eq!((frame.width, frame.height, frame.seq), (32, 24, 1));
        assert!(matches!(
            source.next_frame(&mut frame),
            Err(SourceError::BadFrame { .. })
        ));
        assert_eq!(source.next_frame(&mut frame).expect("end"), Next::End);
    }

    #[test]
    fn every_listed_format_is_read_whatever_the_case_of_its_extension() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_jpeg(&dir.path().join("a.JPEG"), 16, 8);
        let image =
            image::RgbImage::from_fn(12, 6, |x, y| image::Rgb([x as u8 * 20, y as u8 * 40, 7]));
        for (name, format) in [
            ("b.png", image::ImageFormat::Png),
            ("c.Bmp", image::ImageFormat::Bmp),
            ("d.webp", image::ImageFormat::WebP),
        ] {
            image
                .save_with_format(dir.path().join(name), format)
                .expect("save");
        }
        let mut source = open(dir.path(), false).expect("open");
        let mut frame = Frame::with_capacity(16, 8);
        let mut read = Vec::new();
        while source.next_frame(&mut frame).expect("frame") == Next::Frame {
            read.push(frame.origin.clone());
            if frame.width == 12 {
                assert!(
                    frame.rgb == *image.as_raw(),
                    "{}: pixels differ",
                    frame.origin
                );
                assert!(
                    frame.encoded.is_empty(),
                    "only JPEG bytes are passed through"
                );
            }
        }
        assert_eq!(read, ["a.JPEG", "b.png", "c.Bmp", "d.webp"]);
    }

    #[test]
    fn loops_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_jpeg(&dir.path().join("only.jpg"), 16, 16);
        let mut source = open(dir.path(), true).expect("open");
        let mut frame = Frame::with_capacity(16, 16);
        for seq in 0..3 {
            assert_eq!(source.next_frame(&mut frame).expect("frame"), Next::Frame);
            assert_eq!(frame.seq, seq);
        }
    }

    #[test]
    fn a_loop_over_files_none_of_which_decodes_ends_after_one_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.jpg"), b"junk").expect("write");
        std::fs::write(dir.path().join("b.png"), b"").expect("write");
        let mut source = open(dir.path(), true).expect("open");
        let mut frame = Frame::with_capacity(16, 16);
        for _ in 0..2 {
            assert!(matches!(
                source.next_frame(&mut frame),
                Err(SourceError::BadFrame { .. })
            ));
        }
        let end = source.next_frame(&mut frame);
        assert!(
            matches!(&end, Err(SourceError::Fatal(m)) if m.contains("not one of its 2 files")),
            "{end:?}"
        );
        // One good file among bad ones keeps the loop going.
        write_jpeg(&dir.path().join("c.jpg"), 16, 16);
        let mut source = open(dir.path(), true).expect("open");
        let good = (0..9)
            .map(|_| source.next_frame(&mut frame))
            .filter(|r| matches!(r, Ok(Next::Frame)))
            .count();
        assert_eq!(good, 3, "three passes of three files");
    }

    #[test]
    fn a_name_that_is_not_utf8_keeps_its_origin() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let name = std::ffi::OsStr::from_bytes(b"b_\xff.jpg");
        write_jpeg(&dir.path().join(name), 16, 16);
        let mut source = open(dir.path(), false).expect("open");
        let mut frame = Frame::with_capacity(16, 16);
        assert_eq!(source.next_frame(&mut frame).expect("frame"), Next::Frame);
        assert_eq!(frame.origin, "b_\u{fffd}.jpg");
    }

    #[test]
    fn missing_or_empty_directory_is_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = open(dir.path(), false);
        assert!(matches!(empty, Err(SourceError::Fatal(m)) if m.contains("no .jpg")));
        let missing = open(&dir.path().join("nope"), false);
        assert!(matches!(missing, Err(SourceError::Fatal(_))));
    }
}
