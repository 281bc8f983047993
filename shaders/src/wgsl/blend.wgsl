// Alpha blending (Blended): out = (1 - a) x + a p.
// x, out: [N, C, H, W]; pattern: [C * H * W]. info: [total, C * H * W, bits(alpha)].
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> pattern: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= info[0]) {
        return;
    }
    let a = bitcast<f32>(info[2]);
    out[i] = (1.0 - a) * x[i] + a * pattern[i % info[1]];
}
