// SIG: out = clamp(x + d sin(2 pi j f / W), 0, 1) for column j, the same for every row and
// channel. x, out: [N, C, H, W]. info: [total, W, bits(delta), bits(frequency)].
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> info: array<u32>;

const TWO_PI: f32 = 6.283185307179586;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= info[0]) {
        return;
    }
    let w = info[1];
    let j = f32(i % w);
    let delta = bitcast<f32>(info[2]);
    let freq = bitcast<f32>(info[3]);
    let s = delta * sin(TWO_PI * j * freq / f32(w));
    out[i] = clamp(x[i] + s, 0.0, 1.0);
}
