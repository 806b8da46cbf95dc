import { useEffect, useRef, useState } from "react";

/** Paint the area to repaint (inpainting) over an input image. The mask it reports is a PNG
 * of the image's size: white where painted (repaint), black elsewhere (kept). */
export function MaskPainter({ src, width, height, onMask }: { src: string; width: number; height: number; onMask: (dataUrl: string | null) => void }) {
  const canvas = useRef<HTMLCanvasElement | null>(null);
  const drawing = useRef(false);
  const last = useRef<{ x: number; y: number } | null>(null);
  const [brush, setBrush] = useState(Math.max(8, Math.round(Math.min(width, height) / 12)));
  const [painted, setPainted] = useState(false);

  useEffect(() => {
    const c = canvas.current;
    if (!c) return;
    c.width = width;
    c.height = height;
    c.getContext("2d")!.clearRect(0, 0, width, height);
    setPainted(false);
    onMask(null);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [src, width, height]);

  const point = (e: React.PointerEvent<HTMLCanvasElement>) => {
    const r = e.currentTarget.getBoundingClientRect();
    return { x: ((e.clientX - r.left) / r.width) * width, y: ((e.clientY - r.top) / r.height) * height };
  };
  const paint = (e: React.PointerEvent<HTMLCanvasElement>) => {
    const ctx = canvas.current!.getContext("2d")!;
    const p = point(e);
    const from = last.current ?? p;
    // one opaque colour (the overlay itself is translucent), strokes joined between pointer events
    ctx.strokeStyle = ctx.fillStyle = "rgb(255, 64, 160)";
    ctx.lineWidth = brush;
    ctx.lineCap = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(p.x + 0.01, p.y);
    ctx.stroke();
    last.current = p;
    setPainted(true);
  };
  const finish = () => {
    if (!drawing.current) return;
    drawing.current = false;
    last.current = null;
    const src = canvas.current!;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const ctx = out.getContext("2d")!;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    // painted pixels become white: draw the strokes, then turn every non-transparent pixel white
    const img = ctx.getImageData(0, 0, width, height);
    const stroke = src.getContext("2d")!.getImageData(0, 0, width, height).data;
    for (let i = 0; i < img.data.length; i += 4) {
      const v = stroke[i + 3] > 0 ? 255 : 0;
      img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
      img.data[i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    onMask(out.toDataURL("image/png"));
  };
  const clear = () => {
    canvas.current!.getContext("2d")!.clearRect(0, 0, width, height);
    setPainted(false);
    onMask(null);
  };

  return (
    <div className="mask-painter">
      <div className="mask-stage">
        <img src={src} alt="Input image" />
        <canvas
          ref={canvas}
          data-testid="mask-canvas"
          aria-label="Paint the area to repaint"
          onPointerDown={(e) => { drawing.current = true; e.currentTarget.setPointerCapture(e.pointerId); paint(e); }}
          onPointerMove={(e) => drawing.current && paint(e)}
          onPointerUp={finish}
          onPointerCancel={finish}
        />
      </div>
      <div className="row">
        <label>
          Brush {brush}px
          <input type="range" min={2} max={Math.max(16, Math.round(Math.min(width, height) / 3))} value={brush} onChange={(e) => setBrush(Number(e.target.value))} />
        </label>
        <button type="button" className="secondary small" onClick={clear} disabled={!painted}>Clear mask</button>
      </div>
      <div className="muted small-text">{painted ? "Painted areas are generated anew; the rest is kept (inpainting)." : "Paint over the image to repaint only that area; without a mask the whole image is reworked."}</div>
    </div>
  );
}
