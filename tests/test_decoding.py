"""The request decoders alone: each hostile-input class by example, then property-based over
generated bodies (JSON documents, .npy headers, raw shapes): the only outcomes are a validated
float32 array or a ValidationFailed (422) — never another exception, never a NaN let through."""

from __future__ import annotations

import json
import math
import re

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from service.decoding import JSON, NPY, RAW, Limits, decode_npy, parse_batch
from service.errors import ValidationFailed
from tests.gateway_helpers import npy, npy_header, raw_segments

LIMITS = Limits()
ECG = raw_segments("ecg", 1, 128.0)[0]  # (1, 3840) float32
PPG = raw_segments("ppg", 1, 64.0)[0]  # (4, 3840)
Q = {"modality": "ecg", "fs": "128"}


def reasons(body: bytes, ctype: str = JSON, shape: str | None = None, query: dict | None = None) -> set[str]:
    """The reasons `body` is refused for; the query is `Q` for a binary body, none for JSON (whose
    parameters are in the body)."""
    with pytest.raises(ValidationFailed) as err:
        parse_batch(body, ctype, shape, query if query is not None else ({} if ctype == JSON else Q), LIMITS)
    return {p.reason for p in err.value.problems}


def doc(**fields: object) -> bytes:
    base: dict[str, object] = {"modality": "ecg", "fs": 128, "segments": [ECG.tolist()]}
    base.update(fields)
    return json.dumps(base).encode()


def with_segments(raw: str) -> bytes:
    return b'{"modality": "ecg", "fs": 128, "segments": ' + raw.encode() + b"}"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 1000 + b"]" * 1000, "json"),
        (
            b'{"modality": "ecg", "fs": 128, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "segments": [1]}',
            "parameter",  # an unknown field, refused before its value is read
        ),
        (with_segments("[" * 1000 + "]" * 1000), "json|shape"),  # too deep: json on 3.11, shape on 3.12
        (with_segments("[[[[1.0]]]]"), "shape"),
        (b'{"modality": "ecg", "fs": 1' + b"0" * 400 + b', "segments": [[[1]]]}', "fs"),
        (with_segments("[[[1" + "0" * 400 + "]]]"), "out_of_range"),
        (with_segments("[[[1e999]]]"), "out_of_range"),
        (doc(model_version=1e300), "model_version"),
        (b'{"modality": "ecg", "fs": 128, "model_version": 1e999, "segments": [[[1]]]}', "model_version"),
        (doc(model_version=True), "model_version"),
        (doc(model_version=1.5), "model_version"),
        (doc(model_version="1"), "model_version"),
        (doc(model_version=-1), "model_version"),
        (doc(model_version=2**63), "model_version"),
        (doc(fs="128"), "fs"),
        (doc(fs=True), "fs"),
        (doc(fs=None), "fs"),
        (doc(modality=7), "modality"),
        (doc(quality="max"), "quality"),
        (with_segments("[[[true, 1.5]]]"), "dtype"),
        (with_segments('[[["1"]]]'), "dtype"),
        (with_segments("[[[1, 2], [3]]]"), "shape"),
        (b"{not json", "json"),
        (b"\xff\xfe\x00", "json"),
        (b"[]", "json"),
        (b'{"modality": "ecg"}', "json"),
        (doc(segments=(ECG.astype(np.float64) * 1e300).tolist()), "out_of_range"),  # finite float64
        (doc(segments=[np.full_like(ECG, 1e-310, dtype=np.float64).tolist()]), "flat_line"),  # subnormal
    ],
    ids=lambda v: v[:30].decode("latin-1") if isinstance(v, bytes) else str(v),
)
def test_json_classes(body: bytes, reason: str) -> None:
    assert set(reason.split("|")) & reasons(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (npy_header((1_000_000, 4, 3840), "<f4", b"\0" * 64), "npy"),  # 57 GiB claimed, never allocated
        (npy_header((2**40, 2**40), "<f8"), "npy"),
        (npy_header((0, 2**40, 2**40), "<f4"), "shape"),  # zero bytes claimed, reshape would overflow
        (npy_header((1, 1, 1, 3840), "<f4", b"\0" * 15360), "shape"),
        (npy_header((1, 1, 3840), "<f2", b"\0" * 7680), "dtype"),
        (npy(ECG[None].astype(np.float16)), "dtype"),
        (npy(ECG[None].astype(np.longdouble)), "dtype"),
        (npy(ECG[None].astype(np.int32)), "dtype"),
        (npy(np.zeros((1, 1, 3840), dtype=[("a", "<f4")])), "dtype"),
        (npy_header((1, 1, 3840), "|O"), "dtype"),
        (b"\x93NUMPY garbage", "npy"),
        (b"\x93NUMPY\x03\x00" + b"\0" * 20, "npy"),
        (npy(ECG[None].astype(np.float64) * 1e39), "out_of_range"),
        (npy(np.full((1, 1, 3840), 1e-310)), "flat_line"),
        (npy(ECG[None])[:-4], "npy"),  # truncated
        (npy(ECG[None]) + b"\0\0\0\0", "npy"),  # trailing bytes
    ],
    ids=lambda v: v[:24].hex() if isinstance(v, bytes) else str(v),
)
def test_npy_classes(body: bytes, reason: str) -> None:
    assert reason in reasons(body, NPY)


def test_big_endian_and_fortran_npy_are_read_correctly() -> None:
    x = ECG[None].astype(">f8")
    np.testing.assert_array_equal(decode_npy(npy(x)), x)
    f = np.asfortranarray(PPG[None])
    np.testing.assert_array_equal(decode_npy(npy(f)), f)
    batch = parse_batch(npy(x), NPY, None, Q, LIMITS)
    assert batch.windows.x.dtype == np.float32 and batch.windows.x.shape == (1, 1, 3840)


@pytest.mark.parametrize(
    "shape",
    [
        "-1,-1,3840",
        "4294967296,4294967296,1",
        "0,9999999999,9999999999",
        "1,1,1,1",
        "abc",
        "1" * 40,
        "",
        " , ",
        "1;1;3840",
        "\u0661,1,3840",  # an Arabic-Indic 1: int() takes it
        "1,1,\uff13\uff18\uff14\uff10",  # fullwidth 3840
    ],
)
def test_raw_shape_classes(shape: str) -> None:
    assert "shape" in reasons(ECG.tobytes(), RAW, shape)


@hypothesis.settings(max_examples=300, deadline=None, database=None)
@hypothesis.given(
    shape=st.one_of(
        st.text(st.sampled_from("0123456789, \t;x-+\u00a0\u0661\uff11"), max_size=14),
        st.sampled_from(["1,1,3840", " 1 , 1 , 3840 ", "3840", "1,3840", "2,1,1920", "3840,1", "01,1,3840"])
        | st.sampled_from(["1", "\uff11", "\u0661"]).map(lambda one: one + ",1,3840"),
    )
)
def test_an_x_shape_is_taken_only_as_the_ascii_integers_it_writes(shape: str) -> None:
    """The body is one 30 s ECG window (3840 float32): an X-Shape is taken exactly when it is one
    to three comma-separated ASCII integers (spaces around them allowed) whose product is 3840."""
    try:
        parse_batch(ECG.tobytes(), RAW, shape, Q, LIMITS)
        taken = True
    except ValidationFailed as err:
        taken = err.problems[0].reason != "shape"  # read as a shape, refused for something else
    written = re.fullmatch(r" *\d{1,10} *(, *\d{1,10} *){0,2}", shape, re.ASCII) is not None
    assert taken == (written and math.prod(int(n) for n in shape.split(",")) == 3840), shape


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"modality": "ecg", "fs": "nan"}, "fs"),
        ({"modality": "ecg", "fs": "inf"}, "fs"),
        ({"modality": "ecg", "fs": "1" + "0" * 400}, "fs"),
        ({"modality": "ecg", "fs": "0x80"}, "fs"),
        ({"modality": "ecg"}, "fs"),
        ({"fs": "128"}, "modality"),
        ({"modality": "ecg", "fs": "128", "model_version": "1.5"}, "model_version"),
        ({"modality": "ecg", "fs": "128", "model_version": "1" * 5000}, "model_version"),
        ({"modality": "ecg", "fs": "128", "quality": "max"}, "quality"),
        # text that float() / int() read as another number than the client meant to send
        ({"modality": "ecg", "fs": "\u0661\u0662\u0668"}, "fs"),  # Arabic-Indic 128
        ({"modality": "ecg", "fs": "\uff11\uff12\uff18"}, "fs"),  # fullwidth 128
        ({"modality": "ecg", "fs": "1_28"}, "fs"),
        ({"modality": "ecg", "fs": "128\u00a0"}, "fs"),
        ({"modality": "ecg", "fs": "infinity"}, "fs"),
        ({"modality": "ecg", "fs": "128", "model_version": "\u0661"}, "model_version"),
        ({"modality": "ecg", "fs": "128", "stride_s": "1_0"}, "stride_s"),
        ({"modality": "ecg", "fs": "128", "channels": "\u0660"}, "channels"),
    ],
)
def test_query_parameter_classes(query: dict, reason: str) -> None:
    assert reason in reasons(npy(ECG[None]), NPY, None, query)


@pytest.mark.parametrize(
    ("x", "query", "says"),
    [
        (PPG[:3], Q, "ecg takes one channel; got 3: pick with channels="),
        (np.concatenate([PPG, PPG[:1]]), {"modality": "ppg", "fs": "64"}, "ppg takes 1 to 4 channels"),
    ],
)
def test_too_many_channels_say_how_many_the_modality_takes(x: np.ndarray, query: dict, says: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_batch(npy(x[None]), NPY, None, query, LIMITS)
    assert err.value.problems[0].reason == "channels" and says in err.value.problems[0].detail
    picked = parse_batch(npy(x[None]), NPY, None, {**query, "channels": "0"}, LIMITS)
    assert picked.windows.x.shape[1] == 1


_DECIMAL_TEXT = r"[ \t]*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,4})?[ \t]*"
_INTEGER_TEXT = r"[ \t]*\d{1,18}[ \t]*"


@pytest.mark.parametrize(
    ("param", "written", "lo", "hi"),
    [
        ("fs", _DECIMAL_TEXT, 16, 4096),
        ("stride_s", _DECIMAL_TEXT, 1, 3000),
        ("model_version", _INTEGER_TEXT, 0, 2**31 - 1),
    ],
    ids=["fs", "stride_s", "model_version"],
)
@hypothesis.settings(max_examples=200, deadline=None, database=None)
@hypothesis.given(text=st.text(st.sampled_from("0123456789.eE+-_ \t\u00a0\u0661\uff11nainfty"), max_size=8))
def test_a_query_number_is_taken_only_as_the_ascii_number_it_writes(
    param: str, written: str, lo: float, hi: float, text: str
) -> None:
    query = {"modality": "ecg", "fs": "128", param: text}
    try:
        parse_batch(npy(ECG[None]), NPY, None, query, LIMITS)
        refused = False
    except ValidationFailed as err:  # too short at a higher rate: the rate was read
        refused = err.problems[0].reason == param
    if text == "" and param != "fs":
        return  # an empty stride_s / model_version means the default
    taken = re.fullmatch(written, text, re.ASCII) is not None and lo <= float(text) <= hi
    assert refused != taken, (param, text)


@pytest.mark.parametrize(
    ("body", "ctype", "query", "says"),
    [
        (
            npy(ECG[None]),
            NPY,
            {**Q, "stirde_s": "10"},
            "unknown query parameter 'stirde_s'; the parameters are",
        ),
        (doc(stirde_s=10), JSON, {}, "unknown field 'stirde_s' in the JSON body; the fields are segments,"),
        (doc(), JSON, {"modality": "ecg"}, "modality is given in both the query and the JSON body"),
        (doc(), JSON, {"Fs": "128"}, "unknown query parameter 'Fs'"),
    ],
    ids=["query-typo", "json-typo", "twice", "query-typo-with-json"],
)
def test_a_parameter_must_be_known_and_given_once(body: bytes, ctype: str, query: dict, says: str) -> None:
    """A typo or a second value was silently not the one used (the default stride, the body's
    modality)."""
    with pytest.raises(ValidationFailed) as err:
        parse_batch(body, ctype, None, query, LIMITS)
    assert err.value.problems[0].reason == "parameter" and says in err.value.problems[0].detail


def test_the_query_completes_a_json_body() -> None:
    long = np.tile(ECG, (1, 3))  # 90 s: three windows at the default stride, five at 15 s
    batch = parse_batch(doc(segments=[long.tolist()]), JSON, None, {"stride_s": "15"}, LIMITS)
    assert batch.windows.stride_s == 15.0 and len(batch.windows) == 5


_PARAMETER_VALUES = {  # name -> (as JSON, as query text)
    "modality": ("ecg", "ecg"),
    "fs": (128, "128"),
    "stride_s": (30, "30"),
    "channels": ([0], "0"),
    "model_version": (1, "1"),
    "quality": ("full", "full"),
}


@hypothesis.settings(max_examples=300, deadline=None, database=None)
@hypothesis.given(
    placed=st.dictionaries(
        st.sampled_from([*_PARAMETER_VALUES, "stirde_s", "FS", "x", "", "segment"]),
        st.sampled_from(["query", "body", "both"]),
        max_size=5,
    )
)
def test_a_parameter_is_refused_exactly_when_unknown_or_given_twice(placed: dict[str, str]) -> None:
    body: dict[str, object] = {"segments": [ECG.tolist()]}
    query: dict[str, str] = {}
    for name, where in placed.items():
        as_json, as_text = _PARAMETER_VALUES.get(name, (1, "1"))
        if where in ("body", "both"):
            body[name] = as_json
        if where in ("query", "both"):
            query[name] = as_text
    try:
        parse_batch(json.dumps(body).encode(), JSON, None, query, LIMITS)
        refused = None
    except ValidationFailed as err:
        refused = err.problems[0].reason
    bad = any(name not in _PARAMETER_VALUES or where == "both" for name, where in placed.items())
    assert (refused == "parameter") == bad, (placed, refused)
    if not bad and {"modality", "fs"} <= set(placed):
        assert refused is None, (placed, refused)  # both required ones given once: decoded


def test_one_flat_channel_among_four_is_named() -> None:
    x = PPG.copy()
    x[2] = 7.0
    problems = reasons(npy(x[None]), NPY, None, {"modality": "ppg", "fs": "64"})
    assert problems == {"flat_line"}


def test_good_bodies_still_decode() -> None:
    for body, ctype, shape in [
        (doc(), JSON, None),
        (doc(segments=ECG.tolist()), JSON, None),  # one segment as [channel][sample]
        (doc(segments=ECG[0].tolist(), model_version=3, quality="full"), JSON, None),
        (npy(ECG[None].astype(np.float64)), NPY, None),
        (ECG.astype("<f4").tobytes(), RAW, "1, 1, 3840"),
    ]:
        batch = parse_batch(body, ctype, shape, {} if ctype == JSON else Q, LIMITS)
        assert batch.windows.x.dtype == np.float32 and batch.windows.x.shape == (1, 1, 3840)
        assert len(batch.windows) == 1 and batch.windows.usable() == [0]
        np.testing.assert_allclose(batch.windows.take([0])[0], ECG, rtol=1e-6)


# ------------------------------------------------------------------------------------ properties
def _check_outcome(body: bytes, ctype: str, shape: str | None, query: dict) -> None:
    try:
        batch = parse_batch(body, ctype, shape, query, LIMITS)
    except ValidationFailed as exc:
        assert exc.problems and all(p.reason and p.detail for p in exc.problems)
        return
    win = batch.windows
    assert win.x.dtype == np.float32 and win.x.ndim == 3
    assert 1 <= len(win) <= LIMITS.max_windows and win.usable()
    assert np.isfinite(win.take(win.usable())).all()  # every window the encoder will see
    assert set(win.problems) == set(range(len(win))) - set(win.usable())
    assert all(p.reason and p.detail for ps in win.problems.values() for p in ps)
    assert LIMITS.min_fs <= batch.fs <= LIMITS.max_fs


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "modality": st.sampled_from(["ecg", "ppg", "ECG", "eeg", ""]) | json_values,
        "fs": st.sampled_from([128, 64.0, 16, 4096, 15.9, 5000]) | json_values,
        "segments": json_values,
        "model_version": st.sampled_from([1, 0, None, -1]) | json_values,
        "quality": st.sampled_from(["basic", "full"]) | json_values,
        "stride_s": st.sampled_from([None, 1, 30, 0.5, 1e9]) | json_values,
        "channels": st.sampled_from([None, [0], [1, 0], [0, 0], [5]]) | json_values,
    },
)


@hypothesis.settings(max_examples=400, deadline=None, database=None)
@hypothesis.given(doc=fields | json_values)
def test_any_json_document_is_a_result_or_a_422(doc: object) -> None:
    _check_outcome(json.dumps(doc).encode(), JSON, None, {})


@hypothesis.settings(max_examples=300, deadline=None, database=None)
@hypothesis.given(
    body=st.binary(max_size=300),
    ctype=st.sampled_from([JSON, NPY, RAW, "text/plain"]),
    shape=st.none() | st.text(max_size=20),
    query=st.dictionaries(
        st.sampled_from(["modality", "fs", "model_version", "quality", "stride_s", "channels"]),
        st.text(max_size=12),
    ),
)
def test_any_bytes_any_type_any_header_is_a_result_or_a_422(
    body: bytes, ctype: str, shape: str | None, query: dict
) -> None:
    _check_outcome(body, ctype, shape, query)


@hypothesis.settings(max_examples=300, deadline=None, database=None)
@hypothesis.given(
    shape=st.lists(st.integers(min_value=0, max_value=2**40), min_size=0, max_size=4).map(tuple),
    descr=st.sampled_from(
        ["<f4", "<f8", ">f4", ">f8", "<f2", "<f16", "|b1", "<i4", "|O", "<c8", "|V8", "<U3"]
    ),
    payload=st.integers(min_value=0, max_value=64),
    scale=st.sampled_from([1.0, 1e-310, 1e39, 1e300, float("nan"), float("inf")]),
    modality=st.sampled_from(["ecg", "ppg"]),
)
def test_any_npy_header_is_a_result_or_a_422(
    shape: tuple[int, ...], descr: str, payload: int, scale: float, modality: str
) -> None:
    # real window-sized bodies when the header is plausible, else a short payload
    itemsize = {"<f4": 4, ">f4": 4, "<f8": 8, ">f8": 8}.get(descr, 2)
    count = int(np.prod(shape)) if shape and np.prod(shape, dtype=object) < 200_000 else payload
    rng = np.random.default_rng(count)
    with np.errstate(over="ignore", invalid="ignore"):
        data = (rng.standard_normal(count) * scale).astype(
            np.dtype(descr) if itemsize in (4, 8) else np.float32
        )
    body = npy_header(shape, descr, data.tobytes()[: count * itemsize])
    fs = "128" if modality == "ecg" else "64"
    _check_outcome(body, NPY, None, {"modality": modality, "fs": fs})
