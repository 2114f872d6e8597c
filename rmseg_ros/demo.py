"""`make demo`: replay the demo bag through the perception graph and write what came out.

Steps: read the LiDAR -> camera extrinsic from the bag's /tf_static (with `rosbags`; the node
cannot subscribe to TFMessage where tf2_msgs is not installed), start the recorder node, run
`rmseg-bringup --bag` (one process per node), then turn the recording into demo_output/:
bag/ (every output as rosbag2 mcap, on the input's clock: Foxglove, or replay into rviz2),
overlay/*.png, overlay.avi (MJPG), montage.png (every n-th overlay with the subset used, and a
class colour legend), timeline.jsonl (per diagnostics tick: subset used, missing modalities,
states, latency) and summary.json (rates, latency, subsets used, frames). When the recording
has ground truth (the simulator's labels/semantic), summary.json also scores the published
labels against it frame by frame (`against_labels`: per-class IoU and where each class's
pixels went), and, for a simulator recording, separately over each injected failure's stretch of
frames and the rest (`against_labels_by_stretch`), so "what is still wrong" in the montage has
numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rmseg_ros.bag_replay import find_bags
from rmseg_ros.classes import ClassTable
from rmseg_ros.config import share_path
from rmseg_ros.graph import DEFAULT_WEIGHTS
from rmseg_ros.label_metrics import confusion_shares, iou_per_class


def find_bag(root: Path) -> Path:
    """The recording bag_replay_node would play for `root` (the first one under a folder)."""
    found = find_bags(root) if root.exists() else []
    if not found:
        raise SystemExit(f'no rosbag2 recording under {root} (run `make demo-bag`)')
    return found[0]


def bag_extrinsic(bag: Path, camera_info_topic: str = 'camera/camera_info',
                  lidar_topic: str = 'lidar/points') -> np.ndarray | None:
    """T_camera_lidar from the bag's /tf_static and the frame ids of its messages."""
    from rosbags.highlevel import AnyReader

    from rmseg_ros.transforms import TransformTree

    tree = TransformTree()
    frames: dict[str, str] = {}
    tf_seen = False
    with AnyReader([bag]) as reader:
        wanted = {c.topic.lstrip('/'): c for c in reader.connections}
        conns = [c for t, c in wanted.items()
                 if t in ('tf_static', camera_info_topic, lidar_topic)]
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            topic = conn.topic.lstrip('/')
            if topic == 'tf_static':
                tree.add_message(msg)
                tf_seen = True
            elif topic not in frames:
                frames[topic] = msg.header.frame_id
            if tf_seen and len(frames) == 2:
                break
    try:
        return tree.lookup(frames[camera_info_topic], frames[lidar_topic])
    except (KeyError, LookupError, ValueError):
        return None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env['PYTHONPATH'] = os.pathsep.join(p for p in (repo, env.get('PYTHONPATH', '')) if p)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    return env


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(out: Path, bag: Path, elapsed_s: float) -> dict[str, Any]:
    """Recorder files -> timeline.jsonl, overlay.avi, montage.png and the summary dict."""
    outputs = [json.loads(line) for line in (out / 'outputs.jsonl').read_text().splitlines()]
    diags = [json.loads(line) for line in (out / 'diagnostics.jsonl').read_text().splitlines()]
    overlays = [o for o in outputs if o['topic'] == 'overlay']
    pipeline = [d for d in diags if d['name'].endswith(': pipeline')]
    timeline = []
    for d in pipeline:
        v = d['values']
        states = {x['name'].rsplit(' ', 1)[-1]: x['values'].get('state')
                  for x in diags if x['tick'] == d['tick'] and ': modality ' in x['name']}
        timeline.append({'wall': d['wall'], 'level': d['level'], 'message': d['message'],
                         'subset_used': v.get('subset_used'), 'missing': v.get('missing'),
                         'states': states, 'latency_p50_ms': v.get('latency_p50_ms'),
                         'output_rate_hz': v.get('output_rate_hz')})
    with open(out / 'timeline.jsonl', 'w', encoding='utf-8') as f:
        for row in timeline:
            f.write(json.dumps(row) + '\n')
    last = pipeline[-1]['values'] if pipeline else {}
    subsets = {k.split('.', 1)[1]: int(v) for k, v in last.items()
               if k.startswith('subset_count.')}
    walls = [o['wall'] for o in overlays]
    rate = (len(walls) - 1) / (walls[-1] - walls[0]) if len(walls) > 1 else 0.0
    files = [out / 'overlay' / o['file'] for o in overlays]
    _video(files, out / 'overlay.avi')
    states_seen = Counter(f'{m}:{s}' for row in timeline for m, s in row['states'].items())
    summary = {
        'bag': str(bag), 'elapsed_s': round(elapsed_s, 2),
        'overlays': len(overlays),
        'labels': sum(o['topic'] == 'labels' for o in outputs),
        'labeled_points': sum(o['topic'] == 'labeled_points' for o in outputs),
        'output_rate_hz': round(rate, 2),
        'latency_p50_ms': _num(last.get('latency_p50_ms')),
        'latency_p95_ms': _num(last.get('latency_p95_ms')),
        'forward_p50_ms': _num(last.get('forward_p50_ms')),
        'device': last.get('device'), 'backend': last.get('backend'),
        'skipped_frames': _num(last.get('skipped_frames')),
        'subsets_used': subsets,
        'modality_states_seen': dict(states_seen),
        'rejected': {k.split('.', 1)[1]: int(v) for k, v in last.items()
                     if k.startswith('rejected.')},
    }
    _montage(files, overlays, timeline, out / 'montage.png')
    return summary


def read_label_images(bag: Path, topic: str) -> dict[int, np.ndarray]:
    """Header stamp (ns) -> class-id image (mono8) of `topic` in a recording ({} without it)."""
    from rosbags.highlevel import AnyReader

    from rmseg_ros.conversions import image_to_numpy, stamp_ns

    out: dict[int, np.ndarray] = {}
    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic.lstrip('/') == topic.lstrip('/')]
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            out[stamp_ns(msg)] = np.array(image_to_numpy(msg))
    return out


def score_labels(predicted: dict[int, np.ndarray], truth: dict[int, np.ndarray],
                 names: list[str] | tuple[str, ...], ignore_index: int = 255
                 ) -> dict[str, Any] | None:
    """Published labels against ground truth over the frames both have (matched by stamp).

    Per class present in the truth: IoU in % and the share of its pixels predicted as each
    class; the mIoU is over those classes. Predictions at another size are resized (nearest)
    to the truth's. None when no frame matches."""
    common = sorted(set(predicted) & set(truth))
    if not common:
        return None
    k = len(names)
    conf = np.zeros((k, k), np.int64)
    for stamp in common:
        pred, true = predicted[stamp], truth[stamp]
        if pred.shape != true.shape:
            pred = cv2.resize(pred, (true.shape[1], true.shape[0]),
                              interpolation=cv2.INTER_NEAREST)
        valid = (true != ignore_index) & (true < k) & (pred < k)
        conf += np.bincount(true[valid].astype(np.int64) * k + pred[valid],
                            minlength=k * k).reshape(k, k)
    per_class = iou_per_class(conf)
    iou = {names[i]: round(100.0 * float(per_class[i]), 2) for i in range(k) if conf[i].sum()}
    shares = {c: {p: v for j, (p, v) in enumerate(row.items()) if conf[names.index(c), j]}
              for c, row in confusion_shares(names, conf.tolist()).items()}
    return {'frames': len(common), 'miou': round(float(np.mean(list(iou.values()))), 2),
            'class_iou': iou, 'predicted_as_pct': shares}


def failure_stretches(bag: Path) -> dict[str, tuple[int, int]]:
    """Frame ranges [first, stop) of the failures the simulator injected into `bag`, from the
    manifest.json of the render it belongs to ({} for other recordings). A failure over the whole
    recording (e.g. LiDAR gaps placed anywhere in it) names no stretch and is left out."""
    for folder in list(bag.resolve().parents)[:3]:
        manifest = folder / 'manifest.json'
        if not manifest.is_file():
            continue
        for scene in json.loads(manifest.read_text()).get('scenes', []):
            if Path(scene.get('path', '')).name != bag.name:
                continue
            return {f['name']: (int(f['frames'][0]), int(f['frames'][1]))
                    for f in scene.get('failures', [])
                    if [int(v) for v in f['frames']] != [0, int(scene['frames'])]}
    return {}


def score_by_stretch(predicted: dict[int, np.ndarray], truth: dict[int, np.ndarray],
                     names: list[str] | tuple[str, ...], stretches: dict[str, tuple[int, int]]
                     ) -> dict[str, dict[str, Any]]:
    """score_labels over each stretch of frames (frame k = the k-th ground-truth stamp) and over
    the frames in none ('other frames'): what a failure costs, apart from the rest."""
    order = sorted(truth)
    groups = {name: set(order[a:b]) for name, (a, b) in stretches.items()}
    groups['other frames'] = set(order).difference(*groups.values())
    out = {}
    for name, stamps in groups.items():
        scored = score_labels({k: v for k, v in predicted.items() if k in stamps}, truth, names)
        if scored is not None:
            out[name] = scored
    return out


def _num(text: Any) -> float | None:
    try:
        return round(float(text), 3)
    except (TypeError, ValueError):
        return None


def _video(files: list[Path], path: Path, fps: float = 10.0) -> None:
    if not files:
        return
    first = cv2.imread(str(files[0]))
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, (w, h))
    for f in files:
        img = cv2.imread(str(f))
        if img is not None and img.shape[:2] == (h, w):
            writer.write(img)
    writer.release()


def _montage(files: list[Path], overlays: list[dict], timeline: list[dict], path: Path,
             cells: int = 12) -> None:
    """Every n-th overlay, captioned with its stamp and the subset in use around then."""
    if not files:
        return
    pick = np.linspace(0, len(files) - 1, min(cells, len(files))).round().astype(int)
    tiles = []
    for i in pick:
        img = cv2.imread(str(files[i]))
        wall = overlays[i]['wall']
        row = min(timeline, key=lambda r: abs(r['wall'] - wall)) if timeline else {}
        caption = f'#{i} {row.get("subset_used") or "?"}'
        if row.get('missing'):
            caption += f' (no {row["missing"]})'
        cv2.rectangle(img, (0, 0), (img.shape[1], 22), (0, 0, 0), -1)
        cv2.putText(img, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
        tiles.append(img)
    while len(tiles) % 4:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[k:k + 4]) for k in range(0, len(tiles), 4)]
    grid = np.vstack(rows)
    cv2.imwrite(str(path), np.vstack([grid, legend(ClassTable.load(), grid.shape[1])]))


def legend(classes: ClassTable, width: int, row_h: int = 22) -> np.ndarray:
    """A BGR strip naming each class's overlay colour, as many per row as fit `width`."""
    cell = 130
    per_row = max(1, width // cell)
    n_rows = -(-len(classes) // per_row)
    strip = np.zeros((n_rows * row_h + 4, width, 3), np.uint8)
    for i, (name, rgb) in enumerate(zip(classes.names, classes.colors, strict=True)):
        x, y = (i % per_row) * cell + 4, (i // per_row) * row_h + 4
        bgr = tuple(int(v) for v in rgb[::-1])
        cv2.rectangle(strip, (x, y), (x + 16, y + 14), bgr, -1)
        cv2.putText(strip, f'{i} {name}', (x + 22, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1)
    return strip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m rmseg_ros.demo', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--bag', default='data/demo', help='bag directory or a folder holding one')
    ap.add_argument('--checkpoint', default='', help=f'default {DEFAULT_WEIGHTS}')
    ap.add_argument('--out', default='demo_output')
    ap.add_argument('--config', default='', help='perception YAML (default config/perception.yaml)')
    ap.add_argument('--rate', type=float, default=0.5,
                    help='bag playback speed (the default leaves a loaded CPU room)')
    ap.add_argument('--single-process', action='store_true')
    ap.add_argument('--truth-topic', default='labels/semantic',
                    help='ground-truth class ids in the recording, scored against the output '
                         'labels when present')
    opts = ap.parse_args(argv)
    bag = find_bag(Path(opts.bag))
    out = Path(opts.out)
    if out.exists():
        for old in list(out.glob('overlay/*.png')) + list(out.glob('*.*')):
            old.unlink()
        shutil.rmtree(out / 'bag', ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = opts.checkpoint or str(share_path(DEFAULT_WEIGHTS))
    T = bag_extrinsic(bag)
    cmd = [sys.executable, '-m', 'rmseg_ros.bringup', '--bag', str(bag), '--checkpoint',
           checkpoint, '--linger', '3', '--param', f'bag_replay:rate:={opts.rate}']
    if opts.config:
        cmd += ['--config', opts.config]
    if T is not None:
        cmd += ['--param', 'perception:lidar_extrinsic:='
                + json.dumps([round(float(v), 9) for v in T.reshape(-1)])]
    else:
        print('[demo] no LiDAR extrinsic in the bag; using the parameter default', flush=True)
    if opts.single_process:
        cmd.append('--single-process')
    env = _child_env()
    recorder = subprocess.Popen([sys.executable, '-m', 'rmseg_ros.nodes.demo_recorder',
                                 '--out', str(out)], env=env)
    t0 = time.monotonic()
    try:
        status = subprocess.run(cmd, env=env, check=False).returncode
    finally:
        time.sleep(1.0)
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(10)
        except subprocess.TimeoutExpired:
            recorder.kill()
    summary = summarize(out, bag, time.monotonic() - t0)
    summary['bringup_status'] = status
    if (out / 'bag').exists():
        names = ClassTable.load().names
        published = read_label_images(out / 'bag', '/perception/labels')
        truth = read_label_images(bag, opts.truth_topic)
        scored = score_labels(published, truth, names)
        if scored is not None:
            summary['against_labels'] = scored
            stretches = failure_stretches(bag)
            if stretches:  # e.g. the under-exposed stretch, where the node drops RGB
                summary['against_labels_by_stretch'] = score_by_stretch(published, truth, names,
                                                                        stretches)
    (out / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    print(json.dumps(summary, indent=1))
    if status != 0 or summary['overlays'] == 0:
        print('[demo] FAILED: no overlays were produced' if summary['overlays'] == 0
              else f'[demo] bringup exited with status {status}', file=sys.stderr)
        return 1
    scored = summary.get('against_labels')
    if scored:
        print(f'[demo] against the recording\'s {opts.truth_topic} ({scored["frames"]} frames): '
              f'mIoU {scored["miou"]:.1f}; ' + ', '.join(
                  f'{c} {v:.1f}' for c, v in scored['class_iou'].items()))
        for name, part in summary.get('against_labels_by_stretch', {}).items():
            print(f'[demo]   {name} ({part["frames"]} frames): ' + ', '.join(
                f'{c} {v:.1f}' for c, v in part['class_iou'].items()))
    print(f'[demo] wrote {out}/ (bag/ = every output as rosbag2 mcap, overlay.avi, '
          'montage.png, timeline.jsonl, summary.json)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
