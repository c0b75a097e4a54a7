"""Fake of modules/textual_inversion/autocrop.py (1.10.1): the "Auto focal point crop".

Same names and contract as the real one: `Settings(crop_width=512, crop_height=512,
corner_points_weight=0.5, entropy_points_weight=0.5, face_points_weight=0.5, annotate_image=False,
dnn_model_path=None)`; `crop_image(im, settings)` -> list of images, the first the crop. It scales
the image as the real one does (landscape: to the crop height, portrait: to the crop width, square:
by the crop's own orientation), then places a crop_width x crop_height window centred on
`focal_point(im, settings)` and pushed back inside the image; where the scaled image is smaller than
the window (an image less wide than a wide target) the crop runs past the edge and is padded with
black, as in the real one. `PointOfInterest(x, y, weight=1.0, size=10)`; `model_file_path`
(models/opencv/face_detection_yunet_2023mar.onnx) and `download_and_cache_models()` (real: a
requests.get from github.com, no timeout, no status check).

Fake focal point: the brightest pixel (first in reading order) instead of the weighted face /
entropy / edge points. Fake-only: `face_model_online` (False: the download raises requests'
ConnectionError), `calls` (each Settings passed to crop_image / focal_point), `reset()`.
"""
import os

from modules import paths_internal

GREEN = "#0F0"

model_dir_opencv = os.path.join(paths_internal.models_path, 'opencv')
model_file_path = os.path.join(model_dir_opencv, 'face_detection_yunet_2023mar.onnx')
model_url = 'https://github.com/opencv/opencv_zoo/blob/b6e370b10f641879a87890d44e42173077154a05/models/face_detection_yunet/face_detection_yunet_2023mar.onnx?raw=true'

face_model_online = False
calls: list = []


class PointOfInterest:
    def __init__(self, x, y, weight=1.0, size=10):
        self.x = x
        self.y = y
        self.weight = weight
        self.size = size


class Settings:
    def __init__(self, crop_width=512, crop_height=512, corner_points_weight=0.5, entropy_points_weight=0.5,
                 face_points_weight=0.5, annotate_image=False, dnn_model_path=None):
        self.crop_width = crop_width
        self.crop_height = crop_height
        self.corner_points_weight = corner_points_weight
        self.entropy_points_weight = entropy_points_weight
        self.face_points_weight = face_points_weight
        self.annotate_image = annotate_image
        self.desktop_view_image = False
        self.dnn_model_path = dnn_model_path


def focal_point(im, settings):
    calls.append(("focal_point", settings))
    gray = im.convert("L")
    values = list(gray.getdata())
    i = values.index(max(values))
    return PointOfInterest(i % im.width, i // im.width)


def crop_image(im, settings):
    calls.append(("crop_image", settings))
    if settings.face_points_weight > 0 and settings.dnn_model_path is not None \
            and os.path.getsize(settings.dnn_model_path) < 16:
        # real: cv2.FaceDetectorYN.create fails on a file that is not an ONNX model
        raise RuntimeError("OpenCV(4.10.0) error: (-5:Bad argument) Can't read ONNX file in function 'ONNXImporter'")
    w, h, cw, ch = im.width, im.height, settings.crop_width, settings.crop_height
    if w > h:
        scale_by = ch / h
    elif h > w:
        scale_by = cw / w
    elif cw == ch or cw > ch:
        scale_by = cw / w
    else:
        scale_by = ch / h
    im = im.resize((int(w * scale_by), int(h * scale_by)))
    focus = focal_point(im.copy(), settings)
    x1 = focus.x - int(cw / 2)
    if x1 < 0:
        x1 = 0
    elif x1 + cw > im.width:
        x1 = im.width - cw
    y1 = focus.y - int(ch / 2)
    if y1 < 0:
        y1 = 0
    elif y1 + ch > im.height:
        y1 = im.height - ch
    return [im.crop((x1, y1, x1 + cw, y1 + ch))]


def download_and_cache_models():
    if not os.path.exists(model_file_path):
        if not face_model_online:
            import requests

            raise requests.exceptions.ConnectionError(
                "HTTPSConnectionPool(host='github.com', port=443): Max retries exceeded with url: "
                "/opencv/opencv_zoo (Caused by NameResolutionError: Failed to resolve 'github.com')")
        os.makedirs(model_dir_opencv, exist_ok=True)
        with open(model_file_path, "wb") as f:
            f.write(b"fake onnx face detection model bytes")
    return model_file_path


def reset():
    """Fake-only: offline, no calls; model_file_path follows the current data folder."""
    global face_model_online, model_dir_opencv, model_file_path
    face_model_online = False
    calls.clear()
    model_dir_opencv = os.path.join(paths_internal.models_path, 'opencv')
    model_file_path = os.path.join(model_dir_opencv, 'face_detection_yunet_2023mar.onnx')
