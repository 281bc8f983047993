// Patch stamping (BadNets, LC): out = x * (1 - m) + p * m.
// x, out: [N, C, H, W]; mask: [H * W] (0/1, all channels); pattern: [C * H * W].
// info: [total, C * H * W, H * W].
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> pattern: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= info[0]) {
        return;
    }
    let chw = i % info[1];
    let m = mask[chw % info[2]];
    out[i] = x[i] * (1.0 - m) + pattern[chw] * m;
}
