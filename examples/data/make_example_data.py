#!/usr/bin/env python3
"""Writes the built-in example ECGs `ecgs.npy`: three synthetic 12-lead recordings, float32
(3, 12, 2500) = 5 s at 500 Hz, normalised as the reference's preprocessing leaves them (each lead
group I-III, aVR-aVF, V1-V6 scaled to zero mean and unit variance). Needs numpy only.

The heart is modelled as a dipole whose 3-D vector traces P, QRS and T loops (sums of Gaussian
waves in time, as in the McSharry et al. ECG model); each lead is the projection of the dipole
onto its lead axis (frontal leads by their hexaxial angles, precordial leads around the chest),
so Einthoven's relations (III = II - I, aVR = -(I + II) / 2, ...) hold as in real recordings. The
three subjects differ in heart rate, QRS axis and T-wave amplitude; baseline wander and noise are
added.
"""
import numpy as np

FS, SECONDS = 500, 5
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
# Frontal-plane angles (degrees) of the limb leads; precordial leads as unit vectors (x: left,
# y: down, z: posterior-to-anterior), spreading from right-anterior (V1) to left-lateral (V6).
FRONTAL = {"I": 0, "II": 60, "III": 120, "aVR": -150, "aVL": -30, "aVF": 90}
PRECORDIAL = {f"V{i + 1}": a for i, a in enumerate([-100, -70, -45, -15, 10, 35])}


def lead_axis(name):
    if name in FRONTAL:
        a = np.deg2rad(FRONTAL[name])
        return np.array([np.cos(a), np.sin(a), 0.0])
    a = np.deg2rad(PRECORDIAL[name])
    return np.array([np.cos(a), 0.25, -np.sin(a)])


def dipole(t, rr, qrs_axis_deg, t_amp):
    """The heart vector (3, len(t)) for beats every `rr` seconds."""
    phase = (t % rr) / rr  # position within the beat, 0..1
    ax = np.deg2rad(qrs_axis_deg)
    qrs_dir = np.array([np.cos(ax), np.sin(ax), -0.45])  # left and posterior
    # (centre as a fraction of the beat, width (s), amplitude, direction)
    waves = [
        (0.12, 0.025, 0.15, np.array([0.6, 0.7, 0.2])),  # P
        (0.245, 0.008, -0.12, qrs_dir),  # Q
        (0.26, 0.010, 1.2, qrs_dir),  # R
        (0.275, 0.009, -0.25, np.array([0.2, -0.3, 1.0])),  # S
        (0.55, 0.045, t_amp, np.array([0.7, 0.6, 0.3])),  # T
    ]
    v = np.zeros((3, t.size))
    for centre, width, amp, direction in waves:
        d = (phase - centre) * rr
        v += amp * np.exp(-0.5 * (d / width) ** 2) * (direction / np.linalg.norm(direction))[:, None]
    return v


def recording(rng, heart_rate, qrs_axis, t_amp):
    t = np.arange(FS * SECONDS) / FS
    rr = 60.0 / heart_rate
    v = dipole(t + rng.uniform(0, rr), rr, qrs_axis, t_amp)
    axes = np.stack([lead_axis(n) for n in LEADS])  # (12, 3)
    ecg = axes @ v  # (12, T), millivolts
    wander = 0.1 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 2 * np.pi))
    ecg += wander[None, :] + rng.normal(0, 0.01, ecg.shape)
    for group in (slice(0, 3), slice(3, 6), slice(6, 12)):
        g = ecg[group]
        ecg[group] = (g - g.mean()) / g.std()
    return ecg.astype(np.float32)


def main():
    rng = np.random.default_rng(12)
    subjects = [(62, 45, 0.35), (78, 70, 0.30), (95, -10, 0.12)]
    ecgs = np.stack([recording(rng, *s) for s in subjects])
    np.save("ecgs.npy", ecgs)
    print("ecgs.npy", ecgs.shape, ecgs.dtype)


if __name__ == "__main__":
    main()
