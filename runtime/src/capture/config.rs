//! `[[camera]]`: one table per camera, each its own capture and inference pipeline.
//! Every key needs a restart to change.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    camera::{CameraFormat, V4l2Config},
    replay::ReplayConfig,
    synthetic::{Split, SyntheticConfig},
};
use crate::config::Checker;

/// One camera, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraConfig {
    /// Letters, digits, '-' and '_'; used in logs, thread names and sidecars.
    pub name: String,
    pub source: SourceConfig,
}

/// The frame source of one camera, a closed set tagged by `type` in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    Synthetic(SyntheticConfig),
    Replay(ReplayConfig),
    V4l2(V4l2Config),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
enum SourceKind {
    #[default]
    Synthetic,
    Replay,
    V4l2,
}

impl SourceKind {
    fn name(self) -> &'static str {
        match self {
            SourceKind::Synthetic => "synthetic",
            SourceKind::Replay => "replay",
            SourceKind::V4l2 => "v4l2",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum RawSplit {
    Studio,
    Store,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum RawFormat {
    Mjpeg,
    Yuyv,
}

/// One `[[camera]]` table. Flat on purpose: a `type`-tagged serde enum would lose the
/// line/column of errors inside it. Keys that do not apply to the type are rejected
/// during validation; a key left out takes its type's default.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCamera {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(rename = "type")]
    kind: SourceKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    split: Option<RawSplit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames_per_scene: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<String>,
    #[serde(rename = "loop", skip_serializing_if = "Option::is_none")]
    looping: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<RawFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_initial_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_max_ms: Option<i64>,
}

/// Validate the `[[camera]]` tables (none written: one synthetic camera).
pub(crate) fn validate_cameras(raw: Option<&[RawCamera]>, c: &mut Checker) -> Vec<CameraConfig> {
    let default = [RawCamera::default()];
    let raw = raw.unwrap_or(&default);
    if raw.is_empty() {
        c.fail(
            "camera",
            "no cameras configured".into(),
            "add a [[camera]] table, e.g. type = \"synthetic\"".to_string(),
        );
    }
    let cameras: Vec<CameraConfig> = c.within("camera", |c| {
        raw.iter()
            .enumerate()
            .map(|(i, cam)| c.within(i, |c| validate_camera(c, i, cam)))
            .collect()
    });
    for (i, cam) in cameras.iter().enumerate() {
        if cameras[..i].iter().any(|other| other.name == cam.name) {
            c.within("camera", |c| {
                c.within(i, |c| {
                    c.fail(
                        "name",
                        format!("camera name \"{}\" is used twice", cam.name),
                        "give every [[camera]] its own name".to_string(),
                    )
                })
            });
        }
    }
    cameras
}

/// The first synthetic camera's settings (frame size, scene length, fps), else the
/// defaults: what `evaluate` and `calibrate --synthetic` render.
pub(crate) fn first_synthetic(cameras: &[CameraConfig]) -> SyntheticConfig {
    cameras
        .iter()
        .find_map(|c| match &c.source {
            SourceConfig::Synthetic(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Every configured frame size must fit `[pipeline] max_frame_pixels`; with no camera
/// written, the problem is the limit, not the default camera.
pub(crate) fn check_frame_sizes(
    cameras: &[CameraConfig],
    cameras_written: bool,
    max_pixels: u64,
    c: &mut Checker,
) {
    for (i, cam) in cameras.iter().enumerate() {
        let (w, h) = cam.source.frame_size();
        let pixels = u64::from(w) * u64::from(h);
        if pixels <= max_pixels {
            continue;
        }
        let hint = format!(
            "make the frame smaller, or raise [pipeline] max_frame_pixels to at least {pixels}"
        );
        if cameras_written {
            let message = format!(
                "camera[{i}] is {w}x{h}, more pixels than pipeline.max_frame_pixels = {max_pixels}"
            );
            c.within("camera", |c| {
                c.within(i, |c| c.fail("width", message, hint))
            });
        } else {
            // No camera is written: the limit is what the config set.
            let message = format!(
                "pipeline.max_frame_pixels = {max_pixels} is fewer pixels than the default camera's {w}x{h}"
            );
            let hint = format!(
                "raise it to at least {pixels}, or write a [[camera]] with a smaller width and height"
            );
            c.within("pipeline", |c| c.fail("max_frame_pixels", message, hint));
        }
    }
}

fn validate_camera(c: &mut Checker, index: usize, cam: &RawCamera) -> CameraConfig {
    let type_name = cam.kind.name();
    // Keys that only some types accept, with the types that accept them.
    let specific: [(&'static str, bool, &[SourceKind]); 11] = [
        (
            "width",
            cam.width.is_some(),
            &[SourceKind::Synthetic, SourceKind::V4l2],
        ),
        (
            "height",
            cam.height.is_some(),
            &[SourceKind::Synthetic, SourceKind::V4l2],
        ),
        ("seed", cam.seed.is_some(), &[SourceKind::Synthetic]),
        ("split", cam.split.is_some(), &[SourceKind::Synthetic]),
        (
            "frames_per_scene",
            cam.frames_per_scene.is_some(),
            &[SourceKind::Synthetic],
        ),
        ("dir", cam.dir.is_some(), &[SourceKind::Replay]),
        ("loop", cam.looping.is_some(), &[SourceKind::Replay]),
        ("device", cam.device.is_some(), &[SourceKind::V4l2]),
        ("format", cam.format.is_some(), &[SourceKind::V4l2]),
        (
            "reconnect_initial_ms",
            cam.reconnect_initial_ms.is_some(),
            &[SourceKind::V4l2],
        ),
        (
            "reconnect_max_ms",
            cam.reconnect_max_ms.is_some(),
            &[SourceKind::V4l2],
        ),
    ];
    for (key, present, kinds) in specific {
        if present && !kinds.contains(&cam.kind) {
            let names: Vec<String> = kinds.iter().map(|k| format!("\"{}\"", k.name())).collect();
            c.fail(
                key,
                format!("camera[{index}].{key} does not apply to type = \"{type_name}\""),
                format!("remove it, or set type = {}", names.join(" or ")),
            );
        }
    }

    let name = match &cam.name {
        Some(n)
            if !n.is_empty()
                && n.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') =>
        {
            n.clone()
        }
        Some(n) => {
            c.fail(
                "name",
                format!("camera name \"{n}\" may only hold letters, digits, '-' and '_'"),
                "write e.g. name = \"front-basket\"".to_string(),
            );
            format!("cam{index}")
        }
        None => format!("cam{index}"),
    };
    let size = |c: &mut Checker, k: &'static str, v: Option<i64>, default: i64| {
        c.int(k, v.unwrap_or(default), 64, 8192) as u32
    };
    let fps = c.float(
        "fps",
        cam.fps.unwrap_or(0.0),
        |v| (0.0..=1000.0).contains(&v),
        if cam.kind == SourceKind::V4l2 {
            "from 1 to 1000, a rate the camera runs at, e.g. 30"
        } else {
            "from 0 to 1000 (0 = unpaced)"
        },
    );

    let source = match cam.kind {
        SourceKind::Synthetic => SourceConfig::Synthetic(SyntheticConfig {
            width: size(c, "width", cam.width, 1280),
            height: size(c, "height", cam.height, 720),
            fps: fps as f32,
            seed: cam.seed.unwrap_or(1),
            split: match cam.split {
                Some(RawSplit::Studio) => Split::Studio,
                Some(RawSplit::Store) | None => Split::Store,
            },
            frames_per_scene: c.int(
                "frames_per_scene",
                cam.frames_per_scene.unwrap_or(8),
                1,
                1000,
            ) as u32,
            prerendered: 0,
        }),
        SourceKind::Replay => {
            let dir = cam.dir.clone().unwrap_or_default();
            if dir.is_empty() {
                c.fail(
                    "type",
                    format!("camera[{index}] has type = \"replay\" but no dir"),
                    "add dir = \"/path/to/frames\" (a directory of .jpg/.png/.bmp/.webp files)"
                        .to_string(),
                );
            }
            SourceConfig::Replay(ReplayConfig {
                dir: PathBuf::from(dir),
                fps: fps as f32,
                looping: cam.looping.unwrap_or(false),
            })
        }
        SourceKind::V4l2 => {
            let initial = c.int(
                "reconnect_initial_ms",
                cam.reconnect_initial_ms.unwrap_or(500),
                1,
                3_600_000,
            );
            let max = c.int(
                "reconnect_max_ms",
                cam.reconnect_max_ms.unwrap_or(30_000),
                1,
                3_600_000,
            );
            if max < initial && !c.failed("reconnect_initial_ms") && !c.failed("reconnect_max_ms") {
                c.fail(
                    "reconnect_max_ms",
                    format!(
                        "reconnect_max_ms ({max}) is less than reconnect_initial_ms ({initial})"
                    ),
                    "make reconnect_max_ms at least reconnect_initial_ms".to_string(),
                );
            }
            let fps = if cam.fps.is_some() { fps } else { 30.0 };
            if !c.failed("fps") && (fps < 1.0 || fps.fract() != 0.0) {
                c.fail(
                    "fps",
                    format!("camera[{index}].fps = {fps} is not a whole rate a camera can run at"),
                    "write e.g. fps = 30".to_string(),
                );
            }
            SourceConfig::V4l2(V4l2Config {
                device: cam.device.clone().unwrap_or_else(|| "/dev/video0".into()),
                width: size(c, "width", cam.width, 1280),
                height: size(c, "height", cam.height, 720),
                fps: fps as u32,
                format: match cam.format {
                    Some(RawFormat::Yuyv) => CameraFormat::Yuyv,
                    Some(RawFormat::Mjpeg) | None => CameraFormat::Mjpeg,
                },
                reconnect_initial_ms: initial as u64,
                reconnect_max_ms: max as u64,
            })
        }
    };
    CameraConfig { name, source }
}
