// Bilinear grid sampling with align_corners = true and zero padding (WaNet's warp and its
// post-warp augmentation), as PyTorch's grid_sample.
// x: [N, C, H, W]; grid: [N, Ho, Wo, 2] with (x, y) in [-1, 1]; out: [N, C, Ho, Wo].
// info: [total, C, H, W, Ho, Wo].
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> grid: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

fn tap(base: u32, h: u32, w: u32, yy: i32, xx: i32) -> f32 {
    if (xx < 0 || yy < 0 || xx >= i32(w) || yy >= i32(h)) {
        return 0.0;
    }
    return x[base + u32(yy) * w + u32(xx)];
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= info[0]) {
        return;
    }
    let c = info[1];
    let h = info[2];
    let w = info[3];
    let ho = info[4];
    let wo = info[5];
    let p = i % (ho * wo);
    let nc = i / (ho * wo);
    let n = nc / c;
    let g = (n * ho * wo + p) * 2u;
    let ix = (grid[g] + 1.0) * 0.5 * f32(w - 1u);
    let iy = (grid[g + 1u] + 1.0) * 0.5 * f32(h - 1u);
    let x0 = floor(ix);
    let y0 = floor(iy);
    let fx = ix - x0;
    let fy = iy - y0;
    let xi = i32(x0);
    let yi = i32(y0);
    let base = nc * h * w;
    let v = tap(base, h, w, yi, xi) * (1.0 - fx) * (1.0 - fy)
        + tap(base, h, w, yi, xi + 1) * fx * (1.0 - fy)
        + tap(base, h, w, yi + 1, xi) * (1.0 - fx) * fy
        + tap(base, h, w, yi + 1, xi + 1) * fx * fy;
    out[i] = v;
}
