"""Mutation check: break one promise at a time in a scratch copy and show the suite notices.

Each mutant is one exact text replacement in one source file (the old text must occur exactly
once, so a mutant never goes stale silently). For each, a fresh copy of the working tree is made
under a scratch folder, the edit applied there, and pytest runs with the copy's `src` first on
`PYTHONPATH` (worker and `digits up` subprocesses inherit it), so the checkout is never touched.

A mutant first meets the tests named for it (fast: seconds to a minute); one that survives those
meets the whole suite (`-x`), and only a mutant that survives the whole suite is reported as
survived. A clean copy runs every named test first: a "kill" against tests that fail anyway
would mean nothing.

    ./dev run python ops/mutants.py     # every mutant: killed or survived; exit 1 if any survived
    ./dev run python ops/mutants.py --list
    ./dev run python ops/mutants.py --only center_flag_ignored,optimizer_step_removed
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from attrs import frozen

ROOT = Path(__file__).resolve().parents[1]
# A mutant's named tests, then the suite, each get this long; a hang counts as killed only if
# pytest-timeout ended it (a failed test), never by this outer limit.
NAMED_TIMEOUT_S = 900
SUITE_TIMEOUT_S = 3600


@frozen
class Mutant:
    name: str
    area: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files tried first


def m(name: str, area: str, path: str, old: str, new: str, *tests: str) -> Mutant:
    return Mutant(name, area, path, old, new, tests)


S = "src/handwriting_ai/"

MUTANTS: tuple[Mutant, ...] = (
    # ------------------------------------------------------------------ the seven
    m(
        "optimizer_step_removed",
        "training",
        S + "training/loop.py",
        "        optimizer.step()\n",
        "",
        "tests/test_learning.py",
    ),
    m(
        "upload_unpickles_code",
        "safety",
        S + "inference/upload.py",
        'torch.load(io.BytesIO(model), map_location="cpu", weights_only=True)',
        'torch.load(io.BytesIO(model), map_location="cpu", weights_only=False)',
        "tests/test_pickle_safety.py",
    ),
    m(
        "model_loader_unpickles_code",
        "safety",
        S + "inference/engine.py",
        'state = torch.load(path, map_location="cpu", weights_only=True)',
        'state = torch.load(path, map_location="cpu", weights_only=False)',
        "tests/test_pickle_safety.py",
    ),
    m(
        "uncertain_never_set",
        "reads",
        S + "inference/read.py",
        "uncertain=confidence < uncertain_threshold,",
        "uncertain=False,",
        "tests/test_read_promises.py",
    ),
    m(
        "center_flag_ignored",
        "reads",
        S + "api/read.py",
        "center=True if center is None else center",
        "center=True",
        "tests/test_read_promises.py",
    ),
    m(
        "cancelled_queued_job_runs",
        "streams",
        S + "worker/job.py",
        "if status is not None and status.cancel_requested:",
        "if status is not None and status.cancel_requested and False:",
        "tests/test_worker_promises.py",
    ),
    m(
        "promotion_tolerance_dropped",
        "gate",
        S + "inference/promotion.py",
        "bars = [acc - tolerance for acc in",
        "bars = [acc for acc in",
        "tests/test_promotion_gate.py",
    ),
    # ------------------------------------------------------------------ training and models
    m(
        "temperature_never_fitted",
        "training",
        S + "training/run.py",
        "temperature = fit_temperature(val_logits, y_val)",
        "temperature = 1.0",
        "tests/test_learning.py",
    ),
    m(
        "temperature_search_goes_uphill",
        "training",
        S + "training/calibrate.py",
        "if fa < fb:",
        "if fa > fb:",
        "tests/test_learning.py",
    ),
    m(
        "augmentation_never_applied",
        "training",
        S + "training/loop.py",
        "x = augment_batch(pixels[idx].unsqueeze(1).float().div_(255.0), aug, gen)",
        "x = pixels[idx].unsqueeze(1).float().div_(255.0)",
        "tests/test_learning.py",
    ),
    m(
        "resnet_stem_expects_rgb",
        "models",
        S + "models/resnet.py",
        "nn.Conv2d(1, 64,",
        "nn.Conv2d(3, 64,",
        "tests/test_architectures.py",
    ),
    m(
        "batchnorm_dropped_when_fusing",
        "models",
        S + "inference/engine.py",
        "fused.append(fuse_conv_bn_eval(conv, nxt))",
        "fused.append(conv)",
        "tests/test_architectures.py",
    ),
    m(
        "best_ever_bar_forgotten",
        "gate",
        S + "inference/promotion.py",
        "for acc in (active_val_acc, best_val_acc)",
        "for acc in (active_val_acc,)",
        "tests/test_promotion_gate.py",
    ),
    # ------------------------------------------------------------------ preprocessing and decode
    m(
        "invert_flag_ignored",
        "preprocessing",
        S + "preprocessing/pipeline.py",
        "inverted = _dark_background(gray) if options.invert is None else options.invert",
        "inverted = _dark_background(gray)",
        "tests/test_preprocessing.py",
    ),
    m(
        "auto_polarity_flipped",
        "preprocessing",
        S + "preprocessing/pipeline.py",
        "return middle < (lo + hi) / 2",
        "return middle > (lo + hi) / 2",
        "tests/test_preprocessing.py",
    ),
    m(
        "deskew_cap_tripled",
        "preprocessing",
        S + "preprocessing/pipeline.py",
        "angle = max(-cap, min(cap, angle))",
        "angle = max(-3 * cap, min(3 * cap, angle))",
        "tests/test_preprocessing.py",
    ),
    m(
        "ruled_lines_kept",
        "preprocessing",
        S + "preprocessing/pipeline.py",
        "mask, lines_removed = remove_ruled_lines(as_u8(mask))",
        "lines_removed = 0",
        "tests/test_preprocessing.py",
    ),
    m(
        "mnist_normalisation_dropped",
        "preprocessing",
        S + "preprocessing/pipeline.py",
        "tensor = ((pixels.astype(np.float32) / 255.0) - _MEAN) / _STD",
        "tensor = pixels.astype(np.float32) / 255.0",
        "tests/test_preprocessing.py",
    ),
    m(
        "thin_strokes_not_thickened",
        "preprocessing",
        S + "preprocessing/pipeline.py",
        "    if grow < 2:\n        return digit",
        "    if grow < 2 or True:\n        return digit",
        "tests/test_preprocessing.py",
        "tests/test_realistic_set.py",
    ),
    m(
        "center_of_mass_not_centred",
        "preprocessing",
        S + "preprocessing/pipeline.py",
        "limit = (_CANVAS - _BOX) // 2",
        "limit = 0",
        "tests/test_preprocessing.py",
    ),
    m(
        "exif_orientation_ignored",
        "decode",
        S + "preprocessing/decode.py",
        "        ImageOps.exif_transpose(small, in_place=True)",
        "        pass",
        "tests/test_preprocessing.py",
        "tests/test_api_read.py",
    ),
    m(
        "pixel_limit_loosened",
        "decode",
        S + "preprocessing/decode.py",
        "if width * height > limits.max_pixels:",
        "if width * height > 4 * limits.max_pixels:",
        "tests/test_preprocessing.py",
        "tests/test_api_read.py",
    ),
    m(
        "side_limit_off_by_one",
        "decode",
        S + "preprocessing/decode.py",
        "if max(width, height) > limits.max_side_px:",
        "if max(width, height) > limits.max_side_px + 1:",
        "tests/test_preprocessing.py",
        "tests/test_api_read.py",
    ),
    m(
        "alpha_drawing_not_read",
        "decode",
        S + "preprocessing/decode.py",
        "if float(np.ptp(composed)) < 32.0 and float(np.ptp(alpha)) > 0.5:",
        "if False:",
        "tests/test_preprocessing.py",
    ),
    m(
        "deskew_sheared_the_wrong_way",
        "preprocessing",
        S + "preprocessing/pipeline.py",
        "skew = math.tan(math.radians(angle))",
        "skew = -math.tan(math.radians(angle))",
        "tests/test_preprocessing.py",
    ),
    # ------------------------------------------------------------------ reads over HTTP
    m(
        "uncertain_flipped",
        "reads",
        S + "inference/read.py",
        "uncertain=confidence < uncertain_threshold,",
        "uncertain=confidence > uncertain_threshold,",
        "tests/test_read_promises.py",
    ),
    m(
        "read_timeout_ignored",
        "reads",
        S + "api/state.py",
        "return await asyncio.wait_for(future, timeout_s)",
        "return await future",
        "tests/test_read_promises.py",
    ),
    m(
        "read_runs_on_the_event_loop",
        "reads",
        S + "api/admission.py",
        "future = admission._executor.submit(ctx.run, timed)",
        "future = admission._executor.submit(lambda done: done, ctx.run(timed))",
        "tests/test_read_promises.py",
    ),
    m(
        "internal_error_not_logged_with_traceback",
        "reads",
        S + "api/errors.py",
        'log.exception("unhandled_error", error=type(exc).__name__)',
        'log.error("unhandled_error", error=type(exc).__name__)',
        "tests/test_read_promises.py",
    ),
    m(
        "visual_cap_ignored",
        "reads",
        S + "inference/read.py",
        "if len(encoded) > max_bytes:",
        "if len(encoded) > 16 * 1024:",
        "tests/test_read_promises.py",
    ),
    m(
        "answer_is_the_least_likely_digit",
        "reads",
        S + "inference/read.py",
        "digit = int(torch.argmax(probs))",
        "digit = int(torch.argmin(probs))",
        "tests/test_read_real_models.py",
    ),
    # ------------------------------------------------------------------ ensemble maths
    m(
        "temperature_ignored",
        "ensemble",
        S + "inference/calibration.py",
        "return torch.softmax(logits / temperature, dim=-1)",
        "return torch.softmax(logits, dim=-1)",
        "tests/test_ensemble_math.py",
    ),
    m(
        "members_maxed_not_averaged",
        "ensemble",
        S + "inference/calibration.py",
        "return torch.stack(per_member).mean(dim=0)",
        "return torch.stack(per_member).max(dim=0).values",
        "tests/test_ensemble_math.py",
    ),
    m(
        "temperature_override_ignored",
        "ensemble",
        S + "inference/engine.py",
        "return [t if t is not None else m.manifest.temperature for m in self.members]",
        "return [m.manifest.temperature for m in self.members]",
        "tests/test_ensemble_math.py",
    ),
    m(
        "tta_rotation_sign_flipped",
        "ensemble",
        S + "inference/tta.py",
        "    (0, 0, 8, 1.0),",
        "    (0, 0, -8, 1.0),",
        "tests/test_tta.py",
    ),
    m(
        "tta_views_not_averaged",
        "ensemble",
        S + "inference/calibration.py",
        "calibrated_probs(lg, t).mean(dim=0) for lg",
        "calibrated_probs(lg, t)[0] for lg",
        "tests/test_ensemble_math.py",
    ),
    # ------------------------------------------------------------------ streams ledger
    m(
        "commit_fence_owner_ignored",
        "streams",
        S + "worker/commit.py",
        "if p[1][2] ~= ARGV[3] then return 0 end",
        "if false then return 0 end",
        "tests/test_worker_policies.py",
    ),
    m(
        "queue_cap_off_by_one",
        "streams",
        S + "streams/enqueue.py",
        "if held >= tonumber(ARGV[1]) then",
        "if held > tonumber(ARGV[1]) then",
        "tests/test_api_train.py",
    ),
    m(
        "completed_status_kept_as_long_as_failures",
        "streams",
        S + "worker/lifecycle.py",
        "*_end(ref, status, limits.result_ttl_s, now)",
        "*_end(ref, status, limits.failure_ttl_s, now)",
        "tests/test_lifecycle.py",
    ),
    m(
        "retried_entry_not_acked",
        "streams",
        S + "worker/lifecycle.py",
        """        ("XACK", JOBS_STREAM, JOBS_GROUP, ref.entry_id),
    ]
    return Transition("retried", tuple(commands), (event,))""",
        """    ]
    return Transition("retried", tuple(commands), (event,))""",
        "tests/test_lifecycle.py",
    ),
    m(
        "sse_buffers_until_the_end",
        "streams",
        S + "api/events_sse.py",
        "async for entry in hub.follow_job(request_id, after_id=after_id, idle_s=idle_s):",
        "for entry in [\n"
        "                e\n"
        "                async for e in hub.follow_job("
        "request_id, after_id=after_id, idle_s=idle_s)\n"
        "            ]:",
        "tests/test_sse_live.py",
    ),
    m(
        "events_disabled_ignored",
        "streams",
        S + "streams/publisher.py",
        "if isinstance(event, _PROGRESS) and not self.enabled:",
        "if isinstance(event, _PROGRESS) and False:",
        "tests/test_worker_promises.py",
    ),
    m(
        "events_stream_never_trimmed",
        "streams",
        S + "worker/lifecycle.py",
        '("XADD", EVENTS_STREAM, "MAXLEN", "~", str(limits.events_maxlen), "*", *flat),',
        '("XADD", EVENTS_STREAM, "*", *flat),',
        "tests/test_lifecycle.py",
        "tests/test_worker_promises.py",
    ),
    m(
        "retry_delay_ignored",
        "streams",
        S + "worker/job.py",
        "due_s = time.time() + decision.delay_s",
        "due_s = time.time()",
        "tests/test_worker_promises.py",
    ),
    m(
        "completed_entry_not_acked",
        "streams",
        S + "worker/lifecycle.py",
        "commands = [*_events(events, limits), *_end(ref, status, limits.result_ttl_s, now)]",
        "commands = [*_events(events, limits), *_end(ref, status, limits.result_ttl_s, now)[:-1]]",
        "tests/test_lifecycle.py",
    ),
    m(
        "final_job_started_again",
        "streams",
        S + "worker/job.py",
        "if status is not None and status.final:",
        "if status is not None and status.final and False:",
        "tests/test_worker_promises.py",
    ),
    m(
        "poison_cap_off_by_one",
        "streams",
        S + "worker/delivery.py",
        "return max_crashes > 0 and crashes >= max_crashes",
        "return max_crashes > 0 and crashes > max_crashes",
        "tests/test_worker_policies.py",
    ),
    m(
        "request_id_dedupe_disabled",
        "streams",
        S + "streams/enqueue.py",
        "if redis.call('EXISTS', KEYS[1]) == 1 then",
        "if redis.call('EXISTS', KEYS[1]) == 2 then",
        "tests/test_api_train.py",
    ),
    m(
        "burst_worker_blind_to_new_entries",
        "streams",
        S + "worker/group.py",
        "return last is None or parse_id(_s(newest[0][0])) > parse_id(last)",
        "return False",
        "tests/test_worker_policies.py",
    ),
    # ------------------------------------------------------------------ settings
    m(
        "claim_to_heartbeat_rule_loosened",
        "settings",
        S + "settings.py",
        "CLAIM_TO_HEARTBEAT_MIN = 3.0",
        "CLAIM_TO_HEARTBEAT_MIN = 1.0",
        "tests/test_settings.py",
    ),
    m(
        "auto_threads_uncapped",
        "settings",
        S + "settings.py",
        "min(8, os.cpu_count() or 1)",
        "(os.cpu_count() or 1)",
        "tests/test_settings.py",
    ),
    # ------------------------------------------------------------------ reads under load (issue 11)
    m(
        "read_queue_unbounded",
        "admission",
        S + "api/admission.py",
        "if ahead > self.queue or (ahead and expected_start_s + self._mean_s > timeout_s):",
        "if ahead and expected_start_s + self._mean_s > timeout_s:",
        "tests/test_read_admission.py",
    ),
    m(
        "read_wait_estimate_ignored",
        "admission",
        S + "api/admission.py",
        "if ahead > self.queue or (ahead and expected_start_s + self._mean_s > timeout_s):",
        "if ahead > self.queue:",
        "tests/test_read_admission.py",
    ),
    m(
        "timed_out_read_still_runs",
        "admission",
        S + "api/admission.py",
        "asyncio.wait_for(asyncio.wrap_future(future), timeout_s)",
        "asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout_s)",
        "tests/test_read_admission.py",
    ),
    m(
        "admin_work_on_read_threads",
        "admission",
        S + "api/state.py",
        "run_in_executor(self.admin, ctx.run, fn)",
        "run_in_executor(self.reads._executor if self.reads else None, ctx.run, fn)",
        "tests/test_read_admission.py",
    ),
    m(
        "nagle_left_on",
        "edge",
        S + "api/edge.py",
        "        _no_delay(transport)\n",
        "",
        "tests/test_server_edge.py",
    ),
    m(
        "header_deadline_never_armed",
        "edge",
        S + "api/edge.py",
        'self._arm("headers")  # a new connection owes its first request\'s headers from now',
        "pass",
        "tests/test_server_edge.py",
    ),
    m(
        "body_deadline_never_armed",
        "edge",
        S + "api/edge.py",
        '        super().on_headers_complete()\n        self._arm("body")',
        "        super().on_headers_complete()\n        self._disarm()",
        "tests/test_server_edge.py",
    ),
    m(
        "connection_cap_ignored",
        "edge",
        S + "api/edge.py",
        "if len(self.connections) > self.max_connections:",
        "if False:",
        "tests/test_server_edge.py",
    ),
    m(
        "part_limit_answers_422",
        "reads",
        S + "api/read.py",
        "if isinstance(exc.__context__, ParserLimitReached):",
        "if False:",
        "tests/test_server_edge.py",
    ),
    m(
        "ema_never_updated",
        "training",
        S + "training/loop.py",
        "            ema.update_parameters(model)",
        "            pass",
        "tests/test_training.py",
        "tests/test_ema.py",
    ),
    m(
        "ema_computed_but_the_live_weights_shipped",
        "training",
        S + "training/run.py",
        "shipped = ema.module if ema is not None else model",
        "shipped = model",
        "tests/test_training.py",
    ),
    m(
        "elastic_field_unsmoothed",
        "training",
        S + "training/augment.py",
        "field = _smooth(torch.rand(m * 2, 1, h, w, generator=gen) * 2 - 1, cfg.elastic_sigma)",
        "field = torch.rand(m * 2, 1, h, w, generator=gen) * 2 - 1",
        "tests/test_augment_calibration.py",
    ),
    m(
        "percentile_histogram_misses_the_top_value",
        "preprocessing",
        S + "preprocessing/arrays.py",
        "cv2.calcHist([flat], [0], None, [256], [0, 256])",
        "cv2.calcHist([flat], [0], None, [256], [0, 255])",
        "tests/test_percentiles.py",
    ),
    m(
        "drain_measured_across_an_idle_spell",
        "admission",
        S + "api/admission.py",
        "self._last_busy_done = now if self._admitted > self.threads else None",
        "self._last_busy_done = now",
        "tests/test_read_admission_estimates.py",
    ),
    m(
        "drain_estimate_uncapped",
        "admission",
        S + "api/admission.py",
        "per_read = min(self._drain_s, self._mean_s)",
        "per_read = self._drain_s",
        "tests/test_read_admission_estimates.py",
    ),
    m(
        "inline_reads_ignore_the_loop_queue",
        "admission",
        S + "api/admission.py",
        "return mean <= self.inline_max_s and waiting * mean <= timeout_s / 4",
        "return mean <= self.inline_max_s",
        "tests/test_read_inline.py",
    ),
    m(
        "edge_count_never_drops",
        "admission",
        S + "api/shed.py",
        "waiting.arrived_in_app()",
        "pass",
        "tests/test_read_inline.py",
    ),
    m(
        "percentile_index_off",
        "preprocessing",
        S + "preprocessing/arrays.py",
        "virtual = (n - 1) * (q / 100)",
        "virtual = n * (q / 100)",
        "tests/test_percentiles.py",
    ),
    m(
        "onnx_exports_at_once",
        "reads",
        S + "inference/onnx_backend.py",
        "        _EXPORT_LOCK,\n",
        "",
        "tests/test_onnx_backend.py",
    ),
    m(
        "onnxruntime_backend_ignored",
        "reads",
        S + "inference/engine.py",
        'if backend == "onnxruntime":',
        "if False:",
        "tests/test_onnx_backend.py",
    ),
    m(
        "png_never_reduced",
        "decode",
        S + "preprocessing/decode.py",
        "    if factor < 2:\n        return image",
        "    return image",
        "tests/test_phone_photos.py",
    ),
    m(
        "phone_photo_decoded_full_size",
        "decode",
        S + "preprocessing/decode.py",
        "scale = dct_scale(max(width, height))",
        "scale = 1",
        "tests/test_phone_photos.py",
    ),
    m(
        "registry_versions_not_fetched",
        "registry",
        S + "registry/redis_state.py",
        "for version in sorted(stored - local):",
        "for version in sorted(stored - local)[:0]:",
        "tests/faults/test_replicas_apart.py",
    ),
    m(
        "operator_promotion_undone_by_the_gate",
        "registry",
        S + "inference/reconcile.py",
        """        if current not in record.decisions:
            # Served, so decided""",
        """        if False:
            # Served, so decided""",
        "tests/test_models_cli.py",
    ),
    m(
        "feedback_gate_off",
        "feedback",
        S + "inference/reconcile.py",
        '        if served is None or self.feedback is None:\n            return ""',
        '        if True:\n            return ""',
        "tests/test_feedback_gate.py",
    ),
    m(
        "corrections_not_mixed_into_training",
        "feedback",
        S + "training/run.py",
        "    pixels, labels = repeated(feedback.trained, repeat)\n",
        "    return x, y\n",
        "tests/test_feedback_training.py",
    ),
    m(
        "a_read_corrected_twice",
        "feedback",
        S + "api/feedback.py",
        "if not redis.call('SET', KEYS[2], label, 'NX', 'EX',"
        " math.max(ttl, tonumber(ARGV[1]))) then",
        "if false then",
        "tests/test_feedback_api.py",
    ),
)


# ----------------------------------------------------------------------------- the run


@frozen
class Verdict:
    mutant: Mutant
    killed: bool
    by: str  # "named tests", "suite", or why it survived
    seconds: float
    detail: str


def tracked_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files: the working tree as a clone would see it,
    plus work in progress."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def scratch_copy(files: Sequence[str], into: Path) -> Path:
    if into.exists():
        shutil.rmtree(into)
    for name in files:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return into


def apply(mutant: Mutant, copy: Path) -> None:
    path = copy / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"{mutant.name}: the old text occurs {count} times in {mutant.path}")
    path.write_text(text.replace(mutant.old, mutant.new))


def pytest_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy / "src")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def run_pytest(copy: Path, args: Sequence[str], timeout_s: float) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args]
    try:
        done = subprocess.run(
            command,
            cwd=copy,
            env=pytest_env(copy),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-2000:]
        return -1, tail.decode(errors="replace") if isinstance(tail, bytes) else str(tail)
    return done.returncode, (done.stdout + done.stderr)[-4000:]


def failed_line(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED", "ERROR")):
            return line[:160]
    return output.strip().splitlines()[-1][:160] if output.strip() else ""


def imports_from(copy: Path) -> None:
    """The copy's package is the one imported (the editable install must not win)."""
    out = subprocess.run(
        [sys.executable, "-c", "import handwriting_ai; print(handwriting_ai.__file__)"],
        cwd=copy,
        env=pytest_env(copy),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    if not out.startswith(str(copy)):
        raise SystemExit(f"the scratch copy is not what gets imported: {out}")


def judge(mutant: Mutant, files: Sequence[str], base: Path, full_suite: bool) -> Verdict:
    started = time.monotonic()
    copy = scratch_copy(files, base / mutant.name)
    try:
        apply(mutant, copy)
        code, output = run_pytest(copy, mutant.tests, NAMED_TIMEOUT_S)
        if code == 1:
            return Verdict(
                mutant, True, "named tests", time.monotonic() - started, failed_line(output)
            )
        if code != 0:
            # 2: collection error or interrupted; 5: nothing collected; -1: outer timeout.
            return Verdict(
                mutant, False, f"named tests exit {code}", time.monotonic() - started, output[-300:]
            )
        if not full_suite:
            return Verdict(mutant, False, "named tests passed", time.monotonic() - started, "")
        code, output = run_pytest(copy, [], SUITE_TIMEOUT_S)
        killed = code == 1
        by = "suite" if killed else f"suite exit {code}"
        return Verdict(mutant, killed, by, time.monotonic() - started, failed_line(output))
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def control(mutants: Sequence[Mutant], files: Sequence[str], base: Path) -> float:
    """Every named test passes on an unmutated copy."""
    started = time.monotonic()
    copy = scratch_copy(files, base / "control")
    try:
        imports_from(copy)
        names = sorted({test for mutant in mutants for test in mutant.tests})
        code, output = run_pytest(copy, names, NAMED_TIMEOUT_S * 2)
        if code != 0:
            raise SystemExit(f"control run failed (exit {code}): fix the suite first\n{output}")
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return time.monotonic() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--only", default="", help="comma-separated mutant names")
    parser.add_argument(
        "--no-suite", action="store_true", help="stop at the named tests (no whole-suite pass)"
    )
    parser.add_argument("--no-control", action="store_true", help="skip the clean control run")
    args = parser.parse_args(argv)

    chosen = list(MUTANTS)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {mutant.name for mutant in MUTANTS}
        if unknown:
            parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
        chosen = [mutant for mutant in MUTANTS if mutant.name in wanted]
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name:40} {mutant.area:14} {mutant.path}")
        return 0

    files = tracked_files()
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        base = Path(tmp)
        # Refuse stale mutants before spending minutes on anything.
        for mutant in chosen:
            apply(mutant, scratch_copy([mutant.path], base / "check"))
        if not args.no_control:
            print(
                f"control: named tests pass on a clean copy ({control(chosen, files, base):.0f} s)"
            )
        verdicts: list[Verdict] = []
        for mutant in chosen:
            verdict = judge(mutant, files, base, full_suite=not args.no_suite)
            verdicts.append(verdict)
            word = "killed" if verdict.killed else "SURVIVED"
            print(
                f"{word:8} {mutant.name:40} {mutant.area:14} by {verdict.by:<16}"
                f" {verdict.seconds:6.0f} s  {verdict.detail}",
                flush=True,
            )
    killed = sum(v.killed for v in verdicts)
    print(f"\n{killed} killed, {len(verdicts) - killed} survived, of {len(verdicts)} mutants")
    return 0 if killed == len(verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
