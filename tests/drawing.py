"""The tests' drawn images, importable without conftest (tests/test_cuda.py runs with --noconftest)."""

from PIL import Image, ImageDraw


def draw_image(colour=(200, 30, 30), shape="circle", size=(48, 40)) -> Image.Image:
    image = Image.new("RGB", size, (240, 240, 240))
    draw = ImageDraw.Draw(image)
    box = (8, 6, size[0] - 8, size[1] - 6)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return image
