#!/usr/bin/env python3
"""Audio front-end goldens for tests/audio_test.cpp, made by the ORIGINAL code.

Makes short clips with espeak-ng + sox (speech, 8 kHz, stereo, 6 channels, silence,
white noise, 8/16/24/32-bit int, float WAV, FLAC, OGG/Vorbis, MP3, a clip shorter
than one 25 ms frame) in tests/fixtures/audio/, then records what funasr 1.4.16
computes for each with its own load path and front end:

  data = funasr.utils.load_utils.load_audio_text_image_video(path, fs=16000)
         (soundfile float32 read, mean over channels, torchaudio Resample)
  feats, _ = funasr.utils.load_utils.extract_fbank(data, "sound", WavFrontend(
         n_mels=80, frame_length=25, frame_shift=10, window="hamming",
         lfr_m=7, lfr_n=6, dither=0.0))

All results go to tests/fixtures/audio/goldens.safetensors:
  "<clip>"            float32 [rows, 560]  LFR features
  "<clip>.fbank"      float32 [T, 80]      raw fbank (speech_16k_s16 only)
  "<clip>.resampled"  float32 [4000]       first samples after Resample (speech_22k_s24)
  "<clip>.cmvn"       float32 [rows, 560]  LFR + CMVN from am.mvn (short_300 only)

Run with the tools venv (not in CI):
  /root/.cache/kvrun/venv-tools/bin/python tools/make_audio_goldens.py
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf
import torch
from safetensors.numpy import save_file

from funasr.frontends.wav_frontend import WavFrontend, load_cmvn
from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "audio")


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sox(src, dst, *opts, effects=()):
    # -D: no dither, so the conversions are deterministic.
    run("sox", "-D", src, *opts, dst, *effects)


def make_clips(tmp):
    a = os.path.join(tmp, "a.wav")
    b = os.path.join(tmp, "b.wav")
    run("espeak-ng", "-v", "en-us", "-s", "170", "-w", a, "Hello world, testing speech.")
    run("espeak-ng", "-v", "en-gb", "-s", "150", "-p", "70", "-w", b, "Seven bright fish.")
    # 1.2 s of speech from the start of the first utterance (skip the leading silence).
    cut = ("trim", "0.05", "1.2")
    clips = {}

    def out(name):
        p = os.path.join(OUT, name)
        clips[name] = p
        return p

    sox(a, out("speech_16k_s16.wav"), "-r", "16000", "-b", "16", effects=cut)
    sox(a, out("speech_8k_s16.wav"), "-r", "8000", "-b", "16", effects=cut)
    sox(a, out("speech_16k_u8.wav"), "-r", "16000", "-b", "8", "-e", "unsigned-integer",
        effects=("trim", "0.05", "0.8"))
    sox(a, out("speech_22k_s24.wav"), "-r", "22050", "-b", "24", effects=("trim", "0.05", "0.8"))
    sox(a, out("speech_8k_s32.wav"), "-r", "8000", "-b", "32", "-e", "signed-integer",
        effects=("trim", "0.05", "0.8"))
    sox(a, out("speech_16k_f32.wav"), "-r", "16000", "-b", "32", "-e", "floating-point",
        effects=("trim", "0.05", "0.8"))
    sox(a, out("speech_16k.flac"), "-r", "16000", "-b", "16", effects=cut)
    # Stereo: a different utterance in each channel, 16 kHz.
    l = os.path.join(tmp, "l.wav")
    r = os.path.join(tmp, "r.wav")
    sox(a, l, "-r", "16000", "-b", "16", effects=("trim", "0.05", "1.0"))
    sox(b, r, "-r", "16000", "-b", "16", effects=("trim", "0.05", "1.0"))
    run("sox", "-D", "-M", l, r, out("stereo_16k_s16.wav"))
    # 6 channels at 8 kHz: speech, silence, the other utterance, speech at 0.5, noise, speech.
    mono8 = os.path.join(tmp, "m8.wav")
    sox(a, mono8, "-r", "8000", "-b", "16", "-c", "1", effects=("trim", "0.05", "0.6"))
    x, _ = sf.read(mono8, dtype="int16")
    y, _ = sf.read(r, dtype="int16")
    y = y[::2][: len(x)]
    rng = np.random.default_rng(6)
    noise = rng.integers(-3000, 3000, len(x)).astype(np.int16)
    six = np.stack([x, np.zeros_like(x), y, x // 2, noise, -x], axis=1)
    sf.write(out("six_8k_s16.wav"), six, 8000, subtype="PCM_16")
    # Silence and white noise.
    run("sox", "-D", "-n", "-r", "16000", "-b", "16", "-c", "1", out("silence_16k_s16.wav"), "trim", "0", "0.5")
    run("sox", "-D", "-R", "-n", "-r", "16000", "-b", "16", "-c", "1", out("noise_16k_s16.wav"),
        "synth", "0.5", "whitenoise", "vol", "0.3")
    # Lossy codecs through libsndfile (soundfile's bundled build).
    s44 = os.path.join(tmp, "s44.wav")
    sox(a, s44, "-r", "44100", "-b", "16", effects=cut)
    x44, _ = sf.read(s44, dtype="float32")
    sf.write(out("speech_44k.mp3"), x44, 44100, format="MP3", subtype="MPEG_LAYER_III")
    s48 = os.path.join(tmp, "s48.wav")
    sox(a, s48, "-r", "48000", "-b", "16", effects=cut)
    x48, _ = sf.read(s48, dtype="float32")
    sf.write(out("speech_48k.ogg"), x48, 48000, format="OGG", subtype="VORBIS")
    # Shorter than one 25 ms frame (300 samples = 18.75 ms).
    x16, _ = sf.read(clips["speech_16k_s16.wav"], dtype="int16")
    sf.write(out("short_300.wav"), x16[4000:4300], 16000, subtype="PCM_16")
    return clips


def write_mvn(path, dim, rng):
    means = rng.normal(-10, 3, dim).astype(np.float32)
    scales = rng.uniform(0.1, 0.5, dim).astype(np.float32)
    fmt = lambda v: " ".join("%.6g" % x for x in v)
    with open(path, "w") as f:
        f.write("<Nnet>\n<Splice> %d %d\n[ 0 ]\n" % (dim, dim))
        f.write("<AddShift> %d %d\n<LearnRateCoef> 0 [ %s ]\n" % (dim, dim, fmt(means)))
        f.write("<Rescale> %d %d\n<LearnRateCoef> 0 [ %s ]\n</Nnet>\n" % (dim, dim, fmt(scales)))


def frontend(**kw):
    args = dict(n_mels=80, frame_length=25, frame_shift=10, window="hamming", lfr_m=7, lfr_n=6, dither=0.0)
    args.update(kw)
    return WavFrontend(**args)


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    goldens = {}
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_clips(tmp)
    mvn = os.path.join(OUT, "am.mvn")
    write_mvn(mvn, 560, np.random.default_rng(11))
    for name, path in sorted(clips.items()):
        data = load_audio_text_image_video(path, fs=16000)
        feats, lens = extract_fbank(data, data_type="sound", frontend=frontend())
        goldens[name] = feats[0].numpy().astype(np.float32)
        info = sf.info(path)
        print(f"{name}: {info.samplerate} Hz x {info.channels} ch, {info.frames} frames -> "
              f"{data.shape[0]} samples at 16 kHz, features {tuple(goldens[name].shape)}")
        if name == "speech_16k_s16.wav":
            fb, _ = extract_fbank(data, data_type="sound", frontend=frontend(lfr_m=1, lfr_n=1))
            goldens[name + ".fbank"] = fb[0].numpy().astype(np.float32)
        if name == "speech_22k_s24.wav":
            goldens[name + ".resampled"] = data[:4000].numpy().astype(np.float32).copy()
        if name == "short_300.wav":
            cm, _ = extract_fbank(data, data_type="sound", frontend=frontend(cmvn_file=mvn))
            goldens[name + ".cmvn"] = cm[0].numpy().astype(np.float32)
    save_file({k: np.ascontiguousarray(v) for k, v in goldens.items()},
              os.path.join(OUT, "goldens.safetensors"))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"total {total} bytes in {OUT}")


if __name__ == "__main__":
    sys.exit(main())
