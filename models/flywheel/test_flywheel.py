#!/usr/bin/env python3
"""Tests of the flywheel's parts (run by scripts/test.sh in the torch environment):

    target/torch-venv/bin/python models/flywheel/test_flywheel.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import flywheel as fw  # noqa: E402


def binary() -> Path | None:
    for p in (fw.REPO / "target" / "debug" / "framesift", fw.REPO / "target" / "release" / "framesift"):
        if p.exists():
            return p
    return None


class LoadOnnx(unittest.TestCase):
    def test_loaded_weights_compute_what_the_file_does_and_export_back_unchanged(self):
        import torch
        from net import Detector, export_onnx, load_onnx

        shipped = fw.DETECTOR / "model.onnx"
        model = load_onnx(Detector(nc=len(fw.tr.NAMES)), shipped).eval()
        rng = np.random.default_rng(3)
        x = rng.random((1, 3, 320, 320), dtype=np.float32)
        ref = fw.ev.load_session(shipped).run(None, {"images": x})
        with torch.no_grad():
            ours = model.predict(torch.from_numpy(x)).numpy()
        self.assertLess(float(np.abs(ours - ref[0]).max()), 1e-3)
        # Scores are not all tiny: the comparison means something.
        self.assertGreater(float(ref[0][0, 4:].max()), 0.01)
        with tempfile.TemporaryDirectory() as d:
            export_onnx(model, Path(d) / "m.onnx", 320, {})
            again = fw.ev.load_session(Path(d) / "m.onnx").run(None, {"images": x})
        for a, b in zip(ref, again):
            self.assertLess(float(np.abs(a - b).max()), 1e-5)

    def test_a_model_of_another_shape_is_refused(self):
        from net import Detector, load_onnx

        with self.assertRaisesRegex(ValueError, "weights"):
            load_onnx(Detector(nc=len(fw.tr.NAMES), width=(16, 24, 40, 56, 72)), fw.DETECTOR / "model.onnx")


class Choose(unittest.TestCase):
    kept = {
        "framesift": [{"seq": s, "value": 1.0} for s in (3, 40, 41, 90)],
        "uncertainty": [{"seq": s, "value": v} for s, v in ((1, 0.5), (2, 0.9), (5, 0.7), (7, 0.8), (9, 0.6))],
    }

    def test_random_draws_as_many_distinct_frames_seeded_and_differently_per_seed(self):
        a = fw.choose("random", self.kept, 1000, 7)
        self.assertEqual(len(a), 4)
        self.assertEqual(len(set(a)), 4)
        self.assertTrue(all(0 <= i < 1000 for i in a))
        self.assertEqual(a, fw.choose("random", self.kept, 1000, 7))
        self.assertNotEqual(a, fw.choose("random", self.kept, 1000, 8))

    def test_random_is_uniform_over_the_stream(self):
        counts = np.zeros(10)
        for seed in range(2000):
            for i in fw.choose("random", self.kept, 100, seed):
                counts[i // 10] += 1
        # 8000 draws in 10 bins: each near 800 (a biased draw would be far off).
        self.assertLess(np.abs(counts - 800).max(), 120)

    def test_uncertainty_keeps_its_most_valuable_frames_up_to_framesifts_count(self):
        self.assertEqual(fw.choose("uncertainty", self.kept, 1000, 0), [2, 5, 7, 9])
        self.assertEqual(fw.choose("framesift", self.kept, 1000, 0), [3, 40, 41, 90])


class Cached(unittest.TestCase):
    def test_a_step_is_reused_only_for_the_same_inputs(self):
        calls = []

        def compute():
            calls.append(1)
            return len(calls)

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "step.json"
            self.assertEqual(fw.cached(path, {"steps": 400}, compute), 1)
            self.assertEqual(fw.cached(path, {"steps": 400}, compute), 1)
            self.assertEqual(fw.cached(path, {"steps": 200}, compute), 2)
            self.assertEqual(len(calls), 2)
            # Keys holding tuples (a job's chosen frames) match what was stored.
            self.assertEqual(fw.cached(path, {"chosen": [("d", [1, 2])]}, compute), 3)
            self.assertEqual(fw.cached(path, {"chosen": [("d", [1, 2])]}, compute), 3)


class Stream(unittest.TestCase):
    def test_a_kept_frame_whose_objects_differ_from_the_export_stops_the_run(self):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "objects.csv").write_text(
                "image,class,class_id,known,x1,y1,x2,y2,occluded\n"
                "000004.jpg,apple,4,1,1,1,9,9,0\n000004.jpg,apple,4,1,20,1,29,9,0\n")
            fw.check_stream(Path(d), [{"seq": 4, "boxes": 2}])
            with self.assertRaises(SystemExit):
                fw.check_stream(Path(d), [{"seq": 4, "boxes": 3}])
            with self.assertRaises(SystemExit):
                fw.check_stream(Path(d), [{"seq": 5, "boxes": 1}])

    @unittest.skipIf(binary() is None, "no framesift binary in target/")
    def test_each_arms_run_config_is_valid_and_uncertainty_only_turns_the_rest_off(self):
        # Every signal the binary registers, from its default config.
        default = subprocess.run([str(binary()), "config", "default"], capture_output=True,
                                 text=True, env={**os.environ}, check=True).stdout
        registered = set(tomllib.loads(default)["signals"])
        studio = fw.policy_weights(fw.STUDIO_POLICY)
        self.assertEqual(set(studio), registered, "the studio policy weighs every registered signal")
        with tempfile.TemporaryDirectory() as d:
            # The default policy and another one (`--policy`): the runtime's own defaults.
            runtime = Path(d) / "runtime-defaults.toml"
            runtime.write_text(default)
            self.assertNotEqual(fw.policy_weights(runtime), studio)
            for policy in (fw.STUDIO_POLICY, runtime):
                for arm in ("framesift", "uncertainty"):
                    p = Path(d) / f"{arm}.toml"
                    p.write_text(fw.run_config(5, 0.02, arm, policy))
                    r = subprocess.run([str(binary()), "validate", str(p)], capture_output=True,
                                       text=True, env={**os.environ})
                    self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                text = (Path(d) / "uncertainty.toml").read_text()
                self.assertIn("control_share = 0.0", text)
                for sig in registered - {"uncertainty"}:
                    self.assertIn(f"[signals.{sig}]\nweight = 0.0", text)
                text = (Path(d) / "framesift.toml").read_text()
                for sig, weight in fw.policy_weights(policy).items():
                    self.assertIn(f"[signals.{sig}]\nweight = {weight}\n", text)

    def test_a_policy_without_signal_weights_is_refused(self):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "empty.toml"
            p.write_text("[keep]\ntarget_rate = 0.02\n")
            with self.assertRaises(SystemExit):
                fw.policy_weights(p)

if __name__ == "__main__":
    unittest.main(verbosity=2)
