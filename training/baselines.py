"""Feature sets the SSL embeddings are compared with, row-aligned with an embedding table.

random-init   same architecture, random weights (see `training.embed.load_encoder(random_init_seed=)`)
hr_hrv        hand-crafted: heart rate and HRV from neurokit2 beat detection on each segment
band_power    no training at all: log band power of the preprocessed segment per channel, in
              BANDS log-spaced bands from 0.5 Hz to the canonical rate's Nyquist (Welch, 8 s)
true_params   SYNTHETIC cohort only: the simulator's own physiological parameters, an upper
              bound on what the signals can tell about the attributes
recording_inputs  SYNTHETIC ECG only: what each recording was simulated from (its heart rate and
              wave amplitudes after electrode placement, the participant's widths, angles and
              HRV). A tighter bound: the signals show a participant's amplitudes only through
              each recording's placement, so no encoder can know more than these
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from tqdm import tqdm

from pulsefm.quality import beat_indices
from pulsefm.records import Modality
from training.parallel import process_pool

HRV_FEATURES = ("hr_mean", "hr_median", "ibi_sd_ms", "rmssd_ms", "pnn50", "ibi_iqr_ms", "ibi_cv", "n_beats")
# simulator parameters of training.synthetic.Participant that shape each modality's signal
# (not the attributes being predicted): the upper bound uses only what the signal could carry
TRUE_PARAMS: dict[str, tuple[str, ...]] = {
    "ppg": (
        "hr_rest",
        "hrv_std",
        "lfhf",
        "reflection",
        "reflection_delay_s",
        "perfusion",
        "tissue_cutoff_scale",
    ),
    "ecg": ("hr_rest", "hrv_std", "lfhf", "r_amp", "qrs_width", "t_amp", "t_angle"),
}


BANDS = 24
BAND_LOW_HZ = 0.5
WELCH_SECONDS = 8.0


def band_edges(fs: float, n: int = BANDS, low: float = BAND_LOW_HZ) -> np.ndarray:
    return np.geomspace(low, fs / 2, n + 1)


def band_power(segments: np.ndarray, fs: float, n: int = BANDS) -> np.ndarray:
    """(n_segments, C, T) preprocessed segments at `fs` -> (n_segments, C * n) log10 band powers."""
    from scipy.signal import welch

    x = np.asarray(segments, dtype=np.float64)
    freqs, psd = welch(x, fs=fs, nperseg=min(x.shape[-1], round(WELCH_SECONDS * fs)), axis=-1)
    df = freqs[1] - freqs[0]
    edges = band_edges(fs, n)
    bands = [(freqs >= lo) & (freqs < hi) for lo, hi in itertools.pairwise(edges)]
    power = np.stack([psd[..., m].sum(axis=-1) * df for m in bands], axis=-1)  # (N, C, n)
    return np.log10(power + 1e-12).reshape(len(x), -1).astype(np.float32)


def hrv_features(x: np.ndarray, fs: float, modality: Modality | str) -> np.ndarray:
    """HR / HRV summary of one filtered 1-D segment; NaN where fewer than 3 beats are found."""
    beats = beat_indices(x, fs, Modality(modality))
    if beats.size < 3:
        return np.full(len(HRV_FEATURES), np.nan)
    ibi = np.diff(beats) / fs * 1000.0  # ms
    d = np.diff(ibi)
    q75, q25 = np.percentile(ibi, [75, 25])
    return np.array(
        [
            60000.0 / ibi.mean(),
            60000.0 / np.median(ibi),
            ibi.std(),
            np.sqrt(np.mean(d**2)) if d.size else 0.0,
            np.mean(np.abs(d) > 50.0) if d.size else 0.0,
            q75 - q25,
            ibi.std() / ibi.mean(),
            float(beats.size),
        ]
    )


def _hrv_chunk(args: tuple[np.ndarray, float, str]) -> np.ndarray:
    segs, fs, modality = args
    return np.stack([hrv_features(s[0], fs, modality) for s in segs])


def hrv_matrix(
    segments: np.ndarray, fs: float, modality: str, workers: int = 2, chunk: int = 64
) -> np.ndarray:
    """(n, len(HRV_FEATURES)) for segments (n, C, T); channel 0 carries the beats. NaNs -> column median."""
    jobs = [(segments[a : a + chunk], fs, modality) for a in range(0, len(segments), chunk)]
    with process_pool(workers) as pool:
        parts = list(tqdm(pool.map(_hrv_chunk, jobs), total=len(jobs), desc="HR/HRV features", disable=None))
    feats = np.concatenate(parts) if parts else np.empty((0, len(HRV_FEATURES)))
    med = np.nanmedian(feats, axis=0)
    return np.where(np.isfinite(feats), feats, np.nan_to_num(med)).astype(np.float32)


def true_params(table: pd.DataFrame, modality: str) -> np.ndarray:
    """The simulator parameters behind each row's `modality` signal (SYNTHETIC stores only)."""
    cols = list(TRUE_PARAMS[modality])
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise KeyError(f"not a synthetic store: no simulator parameters {missing}")
    return table[cols].to_numpy(dtype=np.float32)


def recording_inputs(table: pd.DataFrame, modality: str) -> np.ndarray:
    """Each row's recording inputs (`training.synthetic.ecg_recording_inputs`), amplitudes as
    log |amplitude| so that a linear probe can form the ratios a z-scored segment keeps.
    SYNTHETIC ECG stores only."""
    from training.synthetic import ecg_recording_inputs, parse_recording_id

    if str(modality) != "ecg":
        raise ValueError(f"recording inputs are replayed for ECG only, not {modality}")
    rows: dict[str, list[float]] = {}
    for rid in table["recording_id"].astype(str).unique():
        seed, index, kind, rec = parse_recording_id(rid)
        if kind != "ecg":
            raise ValueError(f"{rid}: not an ECG recording")
        inputs = ecg_recording_inputs(seed, index, rec)
        rows[rid] = [np.log(abs(v)) if k.endswith("_amp") else v for k, v in inputs.items()]
    return np.array([rows[r] for r in table["recording_id"].astype(str)], dtype=np.float32)
