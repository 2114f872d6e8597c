"""`rmseg-train dataset`: bags -> cached shards (one per bag), skipping bags already cached."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from rmseg_ros.config import to_dict

from .bag_samples import BagSampleReader, DatasetConfig
from .shards import write_shard

log = logging.getLogger('rmseg-train.dataset')


def find_bags(paths: list[str]) -> list[Path]:
    """rosbag2 directories given directly or found (by metadata.yaml) below the given paths, and
    .mcap files given directly (a recording cut before its metadata.yaml was written)."""
    bags: list[Path] = []
    for p in map(Path, paths):
        if (p / 'metadata.yaml').exists():
            bags.append(p)
        elif p.is_file() and p.suffix == '.mcap':
            bags.append(p)
        elif p.is_dir():
            bags.extend(sorted(m.parent for m in p.rglob('metadata.yaml')))
        else:
            raise FileNotFoundError(f'{p}: neither a rosbag2 directory, an .mcap file nor a '
                                    'folder of bags')
    return bags


def fingerprint(bag: Path, config: DatasetConfig) -> str:
    """Changes when the bag's files or the dataset/front-end config change."""
    h = hashlib.sha256(json.dumps(to_dict(config), sort_keys=True, default=str).encode())
    h.update(json.dumps(to_dict(config.frontend()), sort_keys=True).encode())
    for f in sorted(bag.iterdir()) if bag.is_dir() else [bag]:
        st = f.stat()
        h.update(f'{f.name}:{st.st_size}:{st.st_mtime_ns}'.encode())
    return h.hexdigest()[:16]


def build_cache(bags: list[Path], out: Path, config: DatasetConfig) -> dict:
    """Write one shard per bag under `out`; a bag that fails is reported and skipped."""
    frontend = config.frontend()
    summary = {'built': 0, 'cached': 0, 'failed': [], 'samples': 0, 'unlabelled': 0,
               'corrupt_records': 0, 'malformed_samples': 0, 'damaged_chunks': 0,
               'damaged_records': 0, 'damaged_bytes': 0, 'truncated_bags': 0}
    for bag in tqdm(bags, desc='bags', unit='bag'):
        shard_dir = out / bag.name
        fp = fingerprint(bag, config)
        meta_file = shard_dir / 'meta.json'
        if meta_file.exists() and json.loads(meta_file.read_text()).get('fingerprint') == fp:
            summary['cached'] += 1
            continue
        reader = BagSampleReader(bag, config, frontend)
        try:
            n = write_shard(tqdm(reader, desc=bag.name, unit='sample', leave=False), shard_dir,
                            frontend, meta={'fingerprint': fp, 'bag': str(bag)})
        except Exception as exc:  # one unreadable bag must not lose the others
            log.error('%s: skipped: %s', bag, exc)
            summary['failed'].append(f'{bag}: {exc}')
            continue
        summary['built'] += 1
        summary['samples'] += n
        summary['unlabelled'] += reader.stats.unlabelled
        summary['corrupt_records'] += reader.stats.corrupt
        summary['malformed_samples'] += reader.stats.malformed
        summary['damaged_chunks'] += reader.stats.damaged_chunks
        summary['damaged_records'] += reader.stats.damaged_records
        summary['damaged_bytes'] += reader.stats.damaged_bytes
        summary['truncated_bags'] += int(reader.stats.truncated)
    return summary


def run(args: argparse.Namespace, extra: list[str]) -> int:
    parser = argparse.ArgumentParser(prog='rmseg-train dataset',
                                     description='Cache synchronised samples of bags as shards.')
    parser.add_argument('--bags', nargs='+', required=True,
                        help='rosbag2 directories, or folders searched for them')
    opts = parser.parse_args(extra)
    if not args.out:
        parser.error('--out DIR is required (the cache directory)')
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    config = DatasetConfig.load(args.config)
    try:
        bags = find_bags(opts.bags)
    except FileNotFoundError as exc:
        print(f'rmseg-train dataset: {exc}', file=sys.stderr)
        return 2
    if not bags:
        print(f'rmseg-train dataset: no rosbag2 recording (a directory with metadata.yaml, '
              f'or an .mcap file) in {" ".join(opts.bags)}', file=sys.stderr)
        return 2
    summary = build_cache(bags, Path(args.out), config)
    print(json.dumps(summary, indent=1))
    if not summary['built'] + summary['cached']:
        print(f'rmseg-train dataset: no bag could be read ({len(bags)} failed)', file=sys.stderr)
        return 1
    if not summary['samples'] and not summary['cached']:
        print('rmseg-train dataset: the bags gave no sample', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(run(argparse.Namespace(config=None, out=None), sys.argv[1:]))
