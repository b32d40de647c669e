from __future__ import annotations

import numpy as np
import pytest

from pulsefm.datasets import fetch
from pulsefm.pipeline import process_record
from pulsefm.preprocess import spec_for
from training.synthetic import (
    ECG_RECORDING_INPUTS,
    CohortConfig,
    NoiseBank,
    ecg_recording_inputs,
    parse_recording_id,
    sample_participant,
    simulate_participant,
)

CFG = CohortConfig(n_participants=4, recordings=2, ppg_duration_s=70, ecg_duration_s=35, seed=3)


def test_deterministic_by_seed() -> None:
    p1, r1 = simulate_participant(CFG, 1)
    p2, r2 = simulate_participant(CFG, 1)
    assert p1 == p2
    for a, b in zip(r1, r2, strict=True):
        np.testing.assert_array_equal(a.signal, b.signal)
    assert sample_participant(4, 1) != p1


def test_attributes_drive_physiology() -> None:
    ps = [sample_participant(0, i) for i in range(400)]
    age = np.array([p.age for p in ps])
    assert age.min() >= 18 and age.max() <= 80
    assert {p.sex for p in ps} == {0, 1}
    # older participants: lower HRV and stiffer arteries (stronger pulse reflection)
    assert np.corrcoef(age, [p.hrv_std for p in ps])[0, 1] < -0.5
    assert np.corrcoef(age, [p.reflection for p in ps])[0, 1] > 0.5
    # sex and BMI shape the waveform, not only its amplitude (which per-segment z-scoring removes):
    # taller men -> later reflected wave, women -> larger reflection and longer QT (T wave later)
    male = np.array([p.sex for p in ps]) == 1
    for name, sign in (("reflection_delay_s", 1), ("height_cm", 1), ("reflection", -1), ("t_angle", -1)):
        v = np.array([getattr(p, name) for p in ps])
        assert sign * (v[male].mean() - v[~male].mean()) > 0, name
    bmi = np.array([p.bmi for p in ps])
    assert np.corrcoef(bmi, [p.perfusion for p in ps])[0, 1] < -0.5  # lower SNR at the sensor
    assert np.corrcoef(bmi, [p.tissue_cutoff_scale for p in ps])[0, 1] < -0.5  # smoother pulse


def test_records_are_model_ready_with_true_heart_rate() -> None:
    p, recs = simulate_participant(CFG, 0)
    assert len(recs) == 4
    assert {r.modality for r in recs} == {"ppg", "ecg"}
    for r in recs:
        assert all(r.participant_id == p.participant_id for r in recs)
        assert r.modality is not None
        segs = process_record(r, spec_for(r.modality))
        assert segs.ok.all(), [q.reasons for q in segs.quality]
        assert abs(segs.quality[0].heart_rate_bpm - r.metadata["heart_rate_bpm"]) < 6


def test_recording_inputs_replay_the_recordings_own_draws() -> None:
    """ecg_recording_inputs gives the very heart rate each simulated ECG recording was made with, and
    amplitudes within electrode placement (+-5% sd) of the participant's."""
    p, recs = simulate_participant(CFG, 2)
    for r in (r for r in recs if r.modality == "ecg"):
        seed, index, kind, rec = parse_recording_id(r.recording_id)
        assert (seed, index, kind) == (CFG.seed, 2, "ecg")
        inputs = ecg_recording_inputs(seed, index, rec)
        assert tuple(inputs) == ECG_RECORDING_INPUTS
        assert inputs["hr"] == r.metadata["heart_rate_bpm"]
        assert abs(inputs["r_amp"] / p.r_amp - 1) < 0.25 and inputs["qrs_width"] == p.qrs_width
    with pytest.raises(ValueError, match="not a SYNTHETIC recording id"):
        parse_recording_id("mitdb-100")


def test_noise_bank_adds_unit_variance_real_noise() -> None:
    rng = np.random.default_rng(0)
    bank = NoiseBank({"bw": np.cumsum(rng.normal(size=20000)), "em": rng.normal(size=20000)}, fs=360.0)
    x = bank.sample(rng, 1000, 64.0, "bw")
    assert x.shape == (1000,) and abs(x.std() - 1) < 1e-6


@pytest.mark.real_data
def test_real_nstdb_noise_bank_keeps_most_segments_usable() -> None:
    bank = NoiseBank.from_hdf5(fetch("nstdb_noise"))
    assert set(bank.noises) == {"bw", "em", "ma"}
    ok = []
    for i in range(3):
        clean = simulate_participant(CFG, i)[1]
        noisy = simulate_participant(CFG, i, bank)[1]
        for a, b in zip(clean, noisy, strict=True):
            assert not np.allclose(a.signal, b.signal)  # noise was added
            assert b.modality is not None
            ok.extend(process_record(b, spec_for(b.modality)).ok.tolist())
    assert np.mean(ok) >= 0.8


def test_a_wide_cohort_spreads_physiology_and_devices_and_leaves_standard_draws_alone() -> None:
    standard = [sample_participant(0, i) for i in range(300)]
    wide = [sample_participant(0, i, "wide") for i in range(300)]
    assert standard == [sample_participant(0, i, "standard") for i in range(300)]
    assert all(w.age == s.age and w.bmi == s.bmi for w, s in zip(wide, standard, strict=True))
    hr_std, hr_wide = (np.array([p.hr_rest for p in ps]) for ps in (standard, wide))
    assert hr_wide.std() > 1.8 * hr_std.std()
    assert hr_wide.max() > 100 and hr_wide.min() < 50

    cfg = CohortConfig(
        n_participants=8,
        recordings=3,
        ppg_duration_s=70,
        ecg_duration_s=35,
        modalities=("ppg",),
        variety="wide",
    )
    recs = [r for i in range(8) for r in simulate_participant(cfg, i)[1]]
    assert len({r.n_channels for r in recs}) >= 2 and {r.n_channels for r in recs} <= {1, 2, 4}
    assert len({r.fs for r in recs}) >= 3
    for r in recs:
        segs = process_record(r, spec_for("ppg"))
        assert segs.data.shape[1:] == (4, 3840)
        assert abs(segs.quality[0].heart_rate_bpm - r.metadata["heart_rate_bpm"]) < 6, r.recording_id
    with pytest.raises(ValueError, match="variety"):
        CohortConfig(variety="broad")
