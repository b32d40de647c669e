"""A SYNTHETIC cohort: participants whose latent attributes drive physiological simulators.

No public cohort with demographics and waveforms can be downloaded here (docs/data.md), so
multi-participant training and probing run on this generator. Every number computed from it
must be labelled *synthetic*.

    attributes  age ~ U(18, 80); sex ~ Bernoulli(0.5) (1 = male);
                BMI ~ N(22 + 0.06 (age - 18) + 0.8 sex, 3.5) clipped to [16, 45];
                height ~ N(176 cm if male else 163 cm, 7 cm);
                condition ~ Bernoulli(sigmoid(-3.5 + 0.05 (age - 18) + 0.15 (BMI - 25)))
    physiology  resting HR, HRV, LF/HF ratio, ECG P-QRS-T angles / amplitudes / widths (neurokit2
                ecgsyn; women: longer QT), PPG pulse reflection (arterial stiffness), each a smooth
                function of the attributes plus a per-participant random effect. The PPG's
                reflected wave arrives height / stiffness-index seconds after the direct one
                (Millasseau's SI: taller -> later, older or stiffer -> earlier) and is larger in
                women; BMI lowers perfusion, so the optical signal sits closer to the sensor's
                noise floor, and thicker tissue low-passes the pulse. These act on the waveform's
                shape, so they survive the per-segment z-scoring that removes plain amplitudes.
    recordings  several per participant, each with its own HR offset, electrode placement
                (ECG wave amplitudes +-5%), motion, drift and (optionally) real noise from the
                MIT-BIH Noise Stress Test bank
    variety     "standard" (the above), or "wide": a pretraining cohort with the physiological and
                device spread of real recordings (issue: encoders that earn their name on real
                signals). Resting HR gets an extra N(0, 12) bpm (clipped to [40, 140]) and each
                recording +-6 bpm; PPG recordings come from 1, 2 or 4 distinct optical channels
                (0.4 / 0.2 / 0.4; the pipeline fills the four inputs as it does for a user's file),
                at a device rate of 20-128 Hz, through a sensor low-pass of 0.6-1.4x the tissue's,
                inverted in 20 %, with 0.05-0.6 of baseline and motion; ECG recordings see a lead
                placement that scales each wave by N(1, 0.25), an inverted lead in 10 %, a device
                low-pass at 20-45 Hz and an SNR of 6-30 dB. A standard cohort's draws are unchanged.

Deterministic by seed: participant i of seed s always has the same attributes and signals.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import signal as sps

from pulsefm.preprocess import resample
from pulsefm.records import Modality, Record

PPG_CHANNELS = ("green1", "green2", "red", "infrared")


@dataclass(frozen=True)
class CohortConfig:
    n_participants: int = 200
    recordings: int = 4  # per participant and modality
    ppg_duration_s: float = 180.0
    ecg_duration_s: float = 120.0
    ppg_fs: float = 64.0
    ecg_fs: float = 128.0  # ecgsyn cost grows with the rate; the resampling path is exercised by real files
    modalities: tuple[str, ...] = ("ppg", "ecg")
    seed: int = 0
    noise_bank: str | None = None  # path to an NSTDB-like HDF5 (bw / em / ma datasets), or None
    variety: str = "standard"  # or "wide" (module docstring)

    def __post_init__(self) -> None:
        if self.variety not in VARIETIES:
            raise ValueError(f"unknown variety {self.variety!r}; choose one of {VARIETIES}")


VARIETIES = ("standard", "wide")
_WIDE_STREAM = 7  # the last key of a participant's extra generator in a wide cohort
PPG_DEVICE_RATES = (20.0, 25.0, 32.0, 50.0, 64.0, 100.0, 128.0)


@dataclass(frozen=True)
class Participant:
    participant_id: str
    age: float
    sex: int  # 1 = male
    bmi: float
    condition: int
    height_cm: float
    # simulator parameters (the "true" physiology; an upper bound for probes)
    hr_rest: float
    hrv_std: float
    lfhf: float
    r_amp: float
    qrs_width: float
    t_amp: float
    t_angle: float
    reflection: float
    reflection_delay_s: float
    perfusion: float
    tissue_cutoff_scale: float  # optical low-pass of the tissue: < 1 = smoother pulse
    channel_gain: tuple[float, ...] = field(default=(1.0, 1.0, 1.0, 1.0))

    def labels(self) -> dict[str, float | int | str]:
        d = asdict(self)
        d.pop("channel_gain")
        return d


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def sample_participant(seed: int, index: int, variety: str = "standard") -> Participant:
    p = _standard_participant(seed, index)
    if variety == "wide":
        spread = _rng(seed, index, _WIDE_STREAM).normal(0, 12)
        p = replace(p, hr_rest=float(np.clip(p.hr_rest + spread, 40, 140)))
    return p


def _standard_participant(seed: int, index: int) -> Participant:
    rng = _rng(seed, index)
    age = float(rng.uniform(18, 80))
    sex = int(rng.random() < 0.5)
    bmi = float(np.clip(rng.normal(22 + 0.06 * (age - 18) + 0.8 * sex, 3.5), 16, 45))
    p_cond = 1 / (1 + np.exp(-(-3.5 + 0.05 * (age - 18) + 0.15 * (bmi - 25))))
    condition = int(rng.random() < p_cond)
    height = float(np.clip(rng.normal(176 if sex else 163, 7), 145, 205))
    a, b = (age - 50) / 20, (bmi - 25) / 5  # standardised-ish
    # stiffness index (m/s): rises with age and disease; reflected wave after height / SI seconds
    stiffness = float(
        np.clip(5.5 + 0.09 * (age - 18) + 0.8 * condition + 0.2 * b + rng.normal(0, 0.4), 4, 14)
    )
    return Participant(
        participant_id=f"syn{seed:03d}-{index:06d}",
        age=round(age, 2),
        sex=sex,
        bmi=round(bmi, 2),
        condition=condition,
        height_cm=round(height, 1),
        hr_rest=float(
            np.clip(70 - 3 * a + 3 * (1 - sex) + 2.5 * b + 5 * condition + rng.normal(0, 5), 45, 110)
        ),
        hrv_std=float(np.clip(4.0 - 1.2 * a - 0.5 * condition + rng.normal(0, 0.6), 0.5, 8.0)),
        lfhf=float(np.clip(0.6 + 0.25 * a + 0.3 * condition + rng.normal(0, 0.1), 0.2, 2.0)),
        r_amp=float(np.clip(30 * (1 - 0.1 * b + 0.08 * sex) + rng.normal(0, 2), 15, 45)),
        qrs_width=float(np.clip(0.1 * (1 + 0.08 * sex + 0.05 * b) + rng.normal(0, 0.005), 0.07, 0.14)),
        t_amp=float(np.clip(0.75 - 0.12 * a - 0.25 * condition + 0.1 * sex + rng.normal(0, 0.08), 0.1, 1.5)),
        t_angle=float(np.clip(100 + 6 * a + 5 * (1 - sex) + rng.normal(0, 4), 80, 135)),
        reflection=float(
            np.clip(
                0.35 + 0.12 * a + 0.1 * condition + 0.03 * b + 0.08 * (1 - sex) + rng.normal(0, 0.04),
                0.05,
                0.9,
            )
        ),
        reflection_delay_s=float(np.clip(height / 100 / stiffness, 0.1, 0.4)),
        perfusion=float(np.clip(1.0 - 0.15 * b - 0.05 * a + rng.normal(0, 0.08), 0.3, 1.6)),
        tissue_cutoff_scale=float(np.clip(1.0 - 0.08 * b + rng.normal(0, 0.03), 0.6, 1.3)),
        channel_gain=tuple(float(g) for g in rng.uniform([0.9, 0.8, 0.4, 0.5], [1.1, 1.0, 0.7, 0.9])),
    )


class NoiseBank:
    """Real noise (e.g. MIT-BIH NSTDB baseline wander / electrode motion / muscle) to add to signals."""

    def __init__(self, noises: dict[str, np.ndarray], fs: float) -> None:
        self.noises = {k: v / (np.std(v) + 1e-12) for k, v in noises.items()}
        self.fs = fs

    @classmethod
    def from_hdf5(cls, path: str | Path, fs: float = 360.0) -> NoiseBank:
        import h5py

        with h5py.File(path, "r") as fh:
            noises = {k: np.asarray(fh[k][()], dtype=np.float64).reshape(len(fh[k]), -1)[:, 0] for k in fh}
        return cls(noises, fs)

    def sample(self, rng: np.random.Generator, n: int, fs: float, kind: str) -> np.ndarray:
        """`n` samples of unit-variance noise of `kind`, at rate `fs`."""
        src = self.noises[kind]
        need = int(np.ceil(n * self.fs / fs)) + 16
        start = int(rng.integers(0, max(1, src.size - need)))
        out = resample(src[start : start + need], self.fs, fs)[:n]
        return (out - out.mean()) / (out.std() + 1e-12)


ECG_WAVES = ("p", "q", "r", "s", "t")
# the keys of `ecg_recording_inputs`, in order
ECG_RECORDING_INPUTS = ("hr", *(f"{w}_amp" for w in ECG_WAVES), "qrs_width", "t_angle", "hrv_std", "lfhf")
_PPG_STREAM, _ECG_STREAM = 1, 2  # the last key of a recording's generator


def _recording_hr(p: Participant, rng: np.random.Generator, wide: bool) -> float:
    """A recording's heart rate: the participant's resting rate plus its own offset (a recording's
    first draw, in PPG and ECG alike)."""
    return float(np.clip(p.hr_rest + rng.normal(0, 6 if wide else 4), 40, 150 if wide else 130))


def _ecg_draws(p: Participant, rng: np.random.Generator, wide: bool = False) -> tuple[float, np.ndarray]:
    """A recording's first draws: its heart rate, and its P, Q, R, S, T amplitudes after electrode
    placement (each wave scaled by N(1, 0.05); N(1, 0.25) in a wide cohort)."""
    hr = _recording_hr(p, rng, wide)
    amplitudes = np.array((1.2, -5, p.r_amp, -7.5, p.t_amp)) * rng.normal(1, 0.25 if wide else 0.05, 5)
    return hr, amplitudes


def ecg_recording_inputs(seed: int, index: int, rec: int) -> dict[str, float]:
    """What ECG recording `rec` of participant `index` (cohort `seed`) was simulated from: its own
    heart rate and wave amplitudes (replaying its generator's first draws, as `_ecg` makes them)
    and the participant's wave widths/angles and HRV, which every recording shares."""
    p = sample_participant(seed, index)
    hr, amplitudes = _ecg_draws(p, _rng(seed, index, rec, _ECG_STREAM))
    return {
        "hr": hr,
        **{f"{w}_amp": float(a) for w, a in zip(ECG_WAVES, amplitudes, strict=True)},
        "qrs_width": p.qrs_width,
        "t_angle": p.t_angle,
        "hrv_std": p.hrv_std,
        "lfhf": p.lfhf,
    }


def parse_recording_id(recording_id: str) -> tuple[int, int, str, int]:
    """(seed, participant index, modality, recording) of a SYNTHETIC recording id such as
    'syn002-000017-ecg1' (see `sample_participant` and `_ecg`/`_ppg`)."""
    m = re.fullmatch(r"syn(\d+)-(\d+)-(ppg|ecg)(\d+)", recording_id)
    if m is None:
        raise ValueError(f"{recording_id!r} is not a SYNTHETIC recording id")
    return int(m[1]), int(m[2]), m[3], int(m[4])


def _ecg(
    p: Participant, rec: int, cfg: CohortConfig, rng: np.random.Generator, bank: NoiseBank | None
) -> Record:
    import neurokit2 as nk

    wide = cfg.variety == "wide"
    hr, amplitudes = _ecg_draws(p, rng, wide)
    ti = (-70, -15, 0, 15, p.t_angle)
    ai = tuple(amplitudes)
    bi = (0.25, 0.1, p.qrs_width, 0.1, 0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = nk.ecg_simulate(
            duration=cfg.ecg_duration_s,
            sampling_rate=int(cfg.ecg_fs),
            heart_rate=hr,
            heart_rate_std=p.hrv_std,
            method="ecgsyn",
            noise=0.01,
            random_state=int(rng.integers(2**31)),
            lfhfratio=p.lfhf,
            ti=ti,
            ai=ai,
            bi=bi,
        )
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    x = x + 0.05 * np.std(x) * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * np.arange(n) / cfg.ecg_fs)
    if wide:
        lowpass = sps.butter(2, rng.uniform(20, 45), fs=cfg.ecg_fs, output="sos")
        x = sps.sosfiltfilt(lowpass, x) * (-1.0 if rng.random() < 0.1 else 1.0)
    if bank is not None:
        snr_db = rng.uniform(6 if wide else 12, 30)
        mix = sum(
            w * bank.sample(rng, n, cfg.ecg_fs, k)
            for k, w in zip(("bw", "em", "ma"), rng.dirichlet([2, 1, 1]), strict=True)
        )
        x = x + np.std(x) * 10 ** (-snr_db / 20) * mix / (np.std(mix) + 1e-12)
    return Record(
        x[None],
        ("ecg",),
        cfg.ecg_fs,
        p.participant_id,
        f"{p.participant_id}-ecg{rec}",
        Modality.ECG,
        {"synthetic": True, "heart_rate_bpm": hr},
    )


def _ppg(
    p: Participant, rec: int, cfg: CohortConfig, rng: np.random.Generator, bank: NoiseBank | None
) -> Record:
    import neurokit2 as nk

    fs = cfg.ppg_fs
    wide = cfg.variety == "wide"
    hr = _recording_hr(p, rng, wide)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = nk.ppg_simulate(
            duration=cfg.ppg_duration_s,
            sampling_rate=int(fs),
            heart_rate=hr,
            frequency_modulation=float(np.clip(0.05 * p.hrv_std, 0.02, 0.4)),
            ibi_randomness=float(np.clip(0.02 * p.hrv_std, 0.01, 0.2)),
            drift=float(rng.uniform(0, 0.3)),
            motion_amplitude=float(rng.uniform(0, 0.2)),
            powerline_amplitude=0.0,
            random_state=int(rng.integers(2**31)),
        )
    base = np.asarray(base, dtype=np.float64)
    n = base.size
    lag = round(p.reflection_delay_s * fs)
    pulse = base.copy()
    pulse[lag:] += p.reflection * base[:-lag]  # reflected wave: stiffer arteries -> larger, earlier
    pulse = pulse - pulse.mean()
    floor = np.std(pulse)  # the sensor's noise floor, fixed: low perfusion -> lower SNR
    pulse = pulse * p.perfusion
    chans = []
    sensor = float(rng.uniform(0.6, 1.4)) if wide else 1.0
    for c, gain in enumerate(p.channel_gain):
        cutoff = (6.0, 5.5, 4.0, 4.5)[c] * p.tissue_cutoff_scale * sensor  # deeper wavelengths look smoother
        sos = sps.butter(2, cutoff, fs=fs, output="sos")
        y = gain * sps.sosfiltfilt(sos, np.roll(pulse, c))
        y = y + rng.normal(0, 0.03 + 0.02 * c, n) * gain * floor
        chans.append(y)
    x = np.stack(chans)
    if bank is not None:
        wander = bank.sample(rng, n, fs, "bw")
        motion = bank.sample(rng, n, fs, "em")
        amp = np.std(x[0]) * rng.uniform(0.05, 0.6 if wide else 0.3)
        x = x + amp * (wander + 0.5 * motion)[None] * rng.uniform(0.7, 1.3, size=(4, 1))
    names: tuple[str, ...] = PPG_CHANNELS
    if wide:
        x, names, fs = _ppg_device(x, fs, rng)
    return Record(
        x,
        names,
        fs,
        p.participant_id,
        f"{p.participant_id}-ppg{rec}",
        Modality.PPG,
        {"synthetic": True, "heart_rate_bpm": hr},
    )


def _ppg_device(
    x: np.ndarray, fs: float, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[str, ...], float]:
    """A wide cohort's PPG device: 1, 2 or 4 distinct channels, its own rate, sometimes inverted."""
    keep = ((0,), (0, 3), (0, 1, 2, 3))[int(rng.choice(3, p=(0.4, 0.2, 0.4)))]
    device_fs = float(rng.choice(PPG_DEVICE_RATES))
    sign = -1.0 if rng.random() < 0.2 else 1.0
    y = sign * resample(x[list(keep)], fs, device_fs)
    return y, tuple(PPG_CHANNELS[c] for c in keep), device_fs


def simulate_participant(
    cfg: CohortConfig, index: int, bank: NoiseBank | None = None
) -> tuple[Participant, list[Record]]:
    """A participant and all their recordings (each modality in cfg.modalities)."""
    p = sample_participant(cfg.seed, index, cfg.variety)
    records: list[Record] = []
    for r in range(cfg.recordings):
        if "ppg" in cfg.modalities:
            records.append(_ppg(p, r, cfg, _rng(cfg.seed, index, r, _PPG_STREAM), bank))
        if "ecg" in cfg.modalities:
            records.append(_ecg(p, r, cfg, _rng(cfg.seed, index, r, _ECG_STREAM), bank))
    return p, records
