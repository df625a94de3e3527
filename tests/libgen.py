"""Generated photo libraries with their truth, for the `geopin tag` tests and the speed bench.

`make_trip_library` writes a winter trip from Budapest (UTC+01:00) into Romania (UTC+02:00): a phone whose photos
carry GPS, offset tags and GPS time; two cameras without GPS or offset tags, one on home time, one 1 h 07 min fast;
look-alike shots of the same scene by a camera and the phone a few seconds apart; a GPX log over part of the trip
(with a hole); a photo with no time, one with broken EXIF and a duplicate file.

Truth: the traveller moves in straight lines (in degrees) between consecutive phone photos at constant speed, so a
photo's true position is the linear interpolation of the phone positions around its UTC, exactly what exiftool and
geopin compute from the references. Phone positions are the values the EXIF rationals hold, so the truth is exact.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import piexif
from PIL import Image, ImageDraw

PHONE = ("Apple", "iPhone 12")
CAMERA_A = ("Canon", "Canon EOS 80D")
CAMERA_B = ("FUJIFILM", "X-T30")
HOME_ZONE_S = 3600
CAMERA_B_FAST_S = 3600 + 7 * 60  # camera B's clock runs 1 h 07 min ahead of home time

# (name, lat, lon, zone seconds): Hungary on CET, Romania on EET (February: no daylight saving)
STOPS = [
    ("Budapest Parliament", 47.50712, 19.04563, 3600),
    ("Budapest Castle", 47.49620, 19.03960, 3600),
    ("Gellert Hill", 47.48390, 19.05200, 3600),
    ("Szolnok", 47.17400, 20.19650, 3600),
    ("Debrecen", 47.53160, 21.62730, 3600),
    ("Oradea", 47.04650, 21.91890, 7200),
    ("Huedin", 46.86700, 23.04100, 7200),
    ("Cluj-Napoca", 46.77120, 23.62360, 7200),
    ("Turda", 46.56690, 23.78500, 7200),
]
START_UTC = datetime(2023, 2, 6, 7, 30, 0)
SEC_DENOM = 10000  # GPS seconds as n/10000: a position step of about 3 mm


@dataclass
class PhotoTruth:
    rel: str
    make: str
    model: str
    utc: datetime | None  # None: the photo states no time
    lat: float
    lon: float
    has_gps: bool
    role: str  # "phone", "camera", "no_time", "broken", "duplicate"
    scene: int = -1
    pair_of: str = ""  # the phone photo of the same scene shot within seconds (look-alike pair)
    zone_s: int = 0  # the local zone where it was taken

    @property
    def camera(self) -> str:
        """The Make Model pair as written (readers may join them differently: map by rel, not by this)."""
        return f"{self.make} {self.model}".strip()


@dataclass
class LibraryTruth:
    root: Path
    photos: dict[str, PhotoTruth]
    shifts: dict[str, float]  # model → camera clock − UTC, seconds (cameras without offset tags)
    vs_home_s: dict[str, float]  # model → clock − home local time (what --clock-offset states)
    gpx_path: Path | None = None
    gpx_fix_s: float = 10.0
    phone_path: list[tuple[float, float, float]] = field(default_factory=list)  # (UTC s, lat, lon) of the route

    def position_at(self, utc: datetime) -> tuple[float, float]:
        """The true position at a UTC time: linear between the phone photos around it (ends held)."""
        t = (utc - datetime(1970, 1, 1)).total_seconds()
        ts = np.array([p[0] for p in self.phone_path])
        j = int(np.searchsorted(ts, t, side="right"))
        if j == 0:
            return self.phone_path[0][1], self.phone_path[0][2]
        if j == len(ts):
            return self.phone_path[-1][1], self.phone_path[-1][2]
        t0, lat0, lon0 = self.phone_path[j - 1]
        t1, lat1, lon1 = self.phone_path[j]
        f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
        return lat1 * f + lat0 * (1 - f), lon1 * f + lon0 * (1 - f)


# ------------------------------------------------------------------------------------------------------ images

def scene_image(scene: int, size: tuple[int, int], perturb: int = 0) -> Image.Image:
    """A picture of one scene: a gradient and coloured shapes drawn from the scene number; `perturb` > 0 gives the
    same scene as a second camera sees it (shifted a pixel or two, other exposure, sensor noise)."""
    rng = np.random.default_rng(1000 + scene)
    w, h = size
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    horizontal = rng.random() < 0.5
    ramp = np.linspace(0.0, 1.0, w if horizontal else h)
    grad = (c0[None, :] * (1 - ramp[:, None]) + c1[None, :] * ramp[:, None])
    arr = np.broadcast_to(grad[None, :, :], (h, w, 3)) if horizontal else np.broadcast_to(grad[:, None, :], (h, w, 3))
    img = Image.fromarray(np.ascontiguousarray(arr).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif shape == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
            draw.polygon(pts, fill=colour)
    if perturb:
        prng = np.random.default_rng(perturb)
        a = np.asarray(img, dtype=np.float32)
        a = np.roll(a, (int(prng.integers(-2, 3)), int(prng.integers(-2, 3))), axis=(0, 1))
        a = a * prng.uniform(0.93, 1.07) + prng.normal(0, 3.0, a.shape)
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return img


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# -------------------------------------------------------------------------------------------------------- EXIF

def dms_rational(value: float) -> tuple[tuple[tuple[int, int], ...], float]:
    """EXIF degrees/minutes/seconds rationals of |value| and the value they hold exactly."""
    v = abs(value)
    d = int(v)
    m = int((v - d) * 60)
    s = round(((v - d) * 60 - m) * 60 * SEC_DENOM)
    if s >= 60 * SEC_DENOM:
        s -= 60 * SEC_DENOM
        m += 1
    held = d + m / 60 + s / SEC_DENOM / 3600
    return ((d, 1), (m, 1), (s, SEC_DENOM)), held


def snap(lat: float, lon: float) -> tuple[float, float]:
    """The position an EXIF GPS entry written by `exif_bytes` holds."""
    return (np.sign(lat) or 1) * dms_rational(lat)[1], (np.sign(lon) or 1) * dms_rational(lon)[1]


def exif_bytes(make: str, model: str, taken: datetime | None, *, offset_s: int | None = None,
               gps: tuple[float, float] | None = None, gps_utc: datetime | None = None) -> bytes:
    zeroth = {piexif.ImageIFD.Make: make.encode(), piexif.ImageIFD.Model: model.encode()}
    exif: dict = {}
    if taken is not None:
        stamp = taken.strftime("%Y:%m:%d %H:%M:%S").encode()
        exif[piexif.ExifIFD.DateTimeOriginal] = stamp
        exif[piexif.ExifIFD.DateTimeDigitized] = stamp
    if offset_s is not None:
        sign = "-" if offset_s < 0 else "+"
        hh, mm = divmod(abs(offset_s) // 60, 60)
        exif[piexif.ExifIFD.OffsetTimeOriginal] = f"{sign}{hh:02d}:{mm:02d}".encode()
    gps_ifd: dict = {}
    if gps is not None:
        lat, lon = gps
        gps_ifd[piexif.GPSIFD.GPSVersionID] = (2, 3, 0, 0)
        gps_ifd[piexif.GPSIFD.GPSLatitudeRef] = b"N" if lat >= 0 else b"S"
        gps_ifd[piexif.GPSIFD.GPSLatitude] = dms_rational(lat)[0]
        gps_ifd[piexif.GPSIFD.GPSLongitudeRef] = b"E" if lon >= 0 else b"W"
        gps_ifd[piexif.GPSIFD.GPSLongitude] = dms_rational(lon)[0]
    if gps_utc is not None:
        gps_ifd[piexif.GPSIFD.GPSDateStamp] = gps_utc.strftime("%Y:%m:%d").encode()
        gps_ifd[piexif.GPSIFD.GPSTimeStamp] = ((gps_utc.hour, 1), (gps_utc.minute, 1), (gps_utc.second, 1))
    return piexif.dump({"0th": zeroth, "Exif": exif, "GPS": gps_ifd, "1st": {}, "thumbnail": None})


def write_photo(path: Path, jpeg: bytes, exif: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.BytesIO()
    piexif.insert(exif, jpeg, out)
    path.write_bytes(out.getvalue())


def break_exif(path: Path) -> None:
    """Corrupt the EXIF block in place (the IFD0 entry count becomes 0xFFFF), leaving the image decodable."""
    data = bytearray(path.read_bytes())
    k = data.find(b"Exif\x00\x00")
    tiff = k + 6
    little = data[tiff:tiff + 2] == b"II"
    ifd0 = int.from_bytes(data[tiff + 4:tiff + 8], "little" if little else "big")
    data[tiff + ifd0:tiff + ifd0 + 2] = b"\xff\xff"
    data[tiff + ifd0 + 2:tiff + ifd0 + 14] = b"\xde\xad\xbe\xef" * 3
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------------------- the trip

def make_trip_library(root: str | Path, *, seed: int = 0, n_stops: int = 9, size: tuple[int, int] = (96, 64),
                      gpx_stops: tuple[int, int] = (3, 6)) -> LibraryTruth:
    """Write the trip library under `root` (see the module docstring) and return its truth.

    Folders: phone/, canon/, fuji/, odd/ (no time, broken EXIF, a duplicate); the GPX log in tracks/trip.gpx
    covers stops gpx_stops[0]..gpx_stops[1] with a fix every 10 s and a 70-minute hole while driving."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    stops = STOPS[:n_stops]
    epoch = datetime(1970, 1, 1)
    phone: list[tuple[datetime, float, float, int, int]] = []  # utc, lat, lon, zone, stop
    t = START_UTC
    stops_per_day = 3
    for s, (_, slat, slon, zone) in enumerate(stops):
        if s and s % stops_per_day == 0:  # a night: the next day starts at 08:00 home time
            t = datetime(t.year, t.month, t.day, 7, 0, 0) + timedelta(days=1)
        elif s:
            t += timedelta(seconds=int(rng.integers(40 * 60, 100 * 60)))  # drive or walk to the next stop
        for k in range(int(rng.integers(4, 7))):
            if k:
                t += timedelta(seconds=int(rng.integers(90, 600)))
            dlat, dlon = rng.normal(0, 0.0015, 2)  # a few hundred metres around the stop
            lat, lon = snap(slat + dlat, slon + dlon)
            phone.append((t, lat, lon, zone, s))
    path = [((u - epoch).total_seconds(), la, lo) for u, la, lo, _, _ in phone]
    truth = LibraryTruth(root, {}, {}, {}, phone_path=path)
    shifts = {CAMERA_A[1]: float(HOME_ZONE_S), CAMERA_B[1]: float(CAMERA_B_FAST_S + HOME_ZONE_S)}
    truth.shifts = shifts
    truth.vs_home_s = {CAMERA_A[1]: 0.0, CAMERA_B[1]: float(CAMERA_B_FAST_S)}

    scene = 0
    counters = {"phone": 0, "canon": 0, "fuji": 0}

    def next_name(folder: str) -> str:
        counters[folder] += 1
        prefix = {"phone": "IMG_", "canon": "IMG_", "fuji": "DSCF"}[folder]
        return f"{folder}/{prefix}{counters[folder]:04d}.JPG"

    def add_camera(utc: datetime, which: tuple[str, str], sc: int, perturb: int, pair_of: str = "") -> str:
        folder = "canon" if which == CAMERA_A else "fuji"
        rel = next_name(folder)
        taken = utc + timedelta(seconds=shifts[which[1]])
        write_photo(root / rel, jpeg_bytes(scene_image(sc, size, perturb)), exif_bytes(*which, taken))
        lat, lon = truth.position_at(utc)
        zone = phone[min(range(len(phone)), key=lambda i: abs((phone[i][0] - utc).total_seconds()))][3]
        truth.photos[rel] = PhotoTruth(rel, *which, utc, lat, lon, False, "camera", sc, pair_of, zone)
        return rel

    for i, (utc, lat, lon, zone, s) in enumerate(phone):
        rel = next_name("phone")
        taken = utc + timedelta(seconds=zone)
        write_photo(root / rel, jpeg_bytes(scene_image(scene, size)),
                    exif_bytes(*PHONE, taken, offset_s=zone, gps=(lat, lon), gps_utc=utc))
        truth.photos[rel] = PhotoTruth(rel, *PHONE, utc, lat, lon, True, "phone", scene, "", zone)
        scene += 1
        # look-alike: the second and third phone shot of each stop are repeated by camera A and B within seconds
        k = i - next(j for j in range(len(phone)) if phone[j][4] == s)
        if k in (1, 2):
            which = CAMERA_A if k == 1 else CAMERA_B
            delta = int(rng.choice([-3, -2, -1, 1, 2, 3]))
            add_camera(utc + timedelta(seconds=delta), which, scene - 1, perturb=10_000 + scene, pair_of=rel)
        # ordinary camera shots between this phone photo and the next one
        if i + 1 < len(phone):
            nxt = phone[i + 1][0]
            gap = int((nxt - utc).total_seconds())
            n_cam = int(rng.integers(1, 3)) if gap <= 1800 else 1
            for _ in range(n_cam):
                when = utc + timedelta(seconds=int(rng.integers(5, gap - 4)))
                add_camera(when, CAMERA_A if rng.random() < 0.5 else CAMERA_B, scene, 0)
                scene += 1

    # the odd ones: no time, broken EXIF, a duplicate
    _, lat0, lon0, zone0, _ = phone[2]
    rel = "odd/IMG_NOTIME.JPG"
    write_photo(root / rel, jpeg_bytes(scene_image(scene, size)), exif_bytes(*CAMERA_A, None))
    truth.photos[rel] = PhotoTruth(rel, *CAMERA_A, None, lat0, lon0, False, "no_time", scene, "", zone0)
    scene += 1
    rel = "odd/IMG_BROKEN.JPG"
    when = phone[3][0] + timedelta(seconds=30)
    write_photo(root / rel, jpeg_bytes(scene_image(scene, size)),
                exif_bytes(*CAMERA_A, when + timedelta(seconds=shifts[CAMERA_A[1]])))
    break_exif(root / rel)
    lat, lon = truth.position_at(when)
    truth.photos[rel] = PhotoTruth(rel, *CAMERA_A, when, lat, lon, False, "broken", scene, "", phone[3][3])
    scene += 1
    src = next(r for r, p in truth.photos.items() if p.role == "camera" and p.model == CAMERA_B[1] and not p.pair_of)
    rel = "odd/" + Path(src).name.replace("DSCF", "DSCF_copy")
    shutil.copyfile(root / src, root / rel)
    p = truth.photos[src]
    truth.photos[rel] = PhotoTruth(rel, p.make, p.model, p.utc, p.lat, p.lon, False, "duplicate", p.scene, "", p.zone_s)

    if gpx_stops is not None:
        truth.gpx_path = write_trip_gpx(root / "tracks" / "trip.gpx", truth, phone, gpx_stops, truth.gpx_fix_s)
    return truth


def write_trip_gpx(path: Path, truth: LibraryTruth, phone, gpx_stops: tuple[int, int], fix_s: float) -> Path:
    """A logger's track over stops a..b: a fix every fix_s seconds on the true route, from 15 minutes before the
    first phone photo of stop a to 10 minutes after the last of stop b, in two segments with a 70-minute hole
    while driving between stops a+1 and a+2 (the logger was off)."""
    import gpxpy.gpx

    a, b = gpx_stops
    t_start = min(u for u, *_, s in phone if s == a) - timedelta(minutes=15)
    t_end = max(u for u, *_, s in phone if s == b) + timedelta(minutes=10)
    hole_mid = min(u for u, *_, s in phone if s == a + 2)
    hole = (hole_mid - timedelta(minutes=50), hole_mid + timedelta(minutes=20))
    gpx = gpxpy.gpx.GPX()
    trk = gpxpy.gpx.GPXTrack(name="trip")
    gpx.tracks.append(trk)
    seg = gpxpy.gpx.GPXTrackSegment()
    trk.segments.append(seg)
    t = t_start
    while t <= t_end:
        if hole[0] < t < hole[1]:
            if seg.points:
                seg = gpxpy.gpx.GPXTrackSegment()
                trk.segments.append(seg)
            t = hole[1]
            continue
        lat, lon = truth.position_at(t)
        seg.points.append(gpxpy.gpx.GPXTrackPoint(round(lat, 7), round(lon, 7), time=t.replace(tzinfo=UTC)))
        t += timedelta(seconds=fix_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(gpx.to_xml(version="1.1"))
    return path


# ------------------------------------------------------------------------------------------------ the big library

def make_big_library(root: str | Path, n: int = 10_000, seed: int = 0, size: tuple[int, int] = (16, 12)) -> LibraryTruth:
    """n tiny photos for the speed bench: 40 % phone photos with GPS and offset tags, 60 % from cameras A and B
    (no GPS, no offset tags), spread over a month of travel in 100-photo folders. Deterministic by seed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    pool = [jpeg_bytes(scene_image(k, size)) for k in range(64)]
    epoch = datetime(1970, 1, 1)
    truth = LibraryTruth(root, {}, {CAMERA_A[1]: float(HOME_ZONE_S), CAMERA_B[1]: float(CAMERA_B_FAST_S + HOME_ZONE_S)},
                         {CAMERA_A[1]: 0.0, CAMERA_B[1]: float(CAMERA_B_FAST_S)})
    t = START_UTC
    lat, lon = 47.5, 19.0
    phone_rows = []
    kinds = rng.random(n)
    for i in range(n):
        t += timedelta(seconds=int(rng.integers(20, 400)))
        lat += float(rng.normal(0, 0.002))
        lon += float(rng.normal(0, 0.003))
        if kinds[i] < 0.4:
            which, folder = PHONE, "phone"
        elif kinds[i] < 0.7:
            which, folder = CAMERA_A, "canon"
        else:
            which, folder = CAMERA_B, "fuji"
        rel = f"{folder}/{i // 100:03d}/P{i:05d}.JPG"
        jpeg = pool[int(rng.integers(0, len(pool)))]
        if which == PHONE:
            slat, slon = snap(lat, lon)
            exif = exif_bytes(*PHONE, t + timedelta(seconds=HOME_ZONE_S), offset_s=HOME_ZONE_S, gps=(slat, slon), gps_utc=t)
            truth.photos[rel] = PhotoTruth(rel, *PHONE, t, slat, slon, True, "phone", zone_s=HOME_ZONE_S)
            phone_rows.append(((t - epoch).total_seconds(), slat, slon))
        else:
            exif = exif_bytes(*which, t + timedelta(seconds=truth.shifts[which[1]]))
            truth.photos[rel] = PhotoTruth(rel, *which, t, lat, lon, False, "camera", zone_s=HOME_ZONE_S)
        write_photo(root / rel, jpeg, exif)
    truth.phone_path = phone_rows
    return truth
