// The cleanser's distillation loss, forward and backward in one pass:
//   L = (1/N) sum_n sum_k p_nk (log p_nk - log q_nk),  p = softmax(t / T), q = softmax(s / T)
//   dL/ds_nk = (q_nk - p_nk) / (T N)
// student, teacher: [N, K] logits. out: [N, K + 1]; out[n, k] = dL/ds_nk for k < K and
// out[n, K] = row n's share of L. One invocation per output element; each recomputes its row's
// log-sum-exps (K is a class count, so this is cheaper than a second pass through memory).
// info: [N * (K + 1), K, bits(1 / T), bits(1 / N)].
@group(0) @binding(0) var<storage, read_write> student: array<f32>;
@group(0) @binding(1) var<storage, read_write> teacher: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= info[0]) {
        return;
    }
    let k = info[1];
    let inv_t = bitcast<f32>(info[2]);
    let inv_n = bitcast<f32>(info[3]);
    let row = i / (k + 1u);
    let col = i % (k + 1u);
    let base = row * k;
    // Row maxima for stable log-sum-exp.
    var ms = -3.402823e38;
    var mt = -3.402823e38;
    for (var j = 0u; j < k; j = j + 1u) {
        ms = max(ms, student[base + j] * inv_t);
        mt = max(mt, teacher[base + j] * inv_t);
    }
    var zs = 0.0;
    var zt = 0.0;
    for (var j = 0u; j < k; j = j + 1u) {
        zs = zs + exp(student[base + j] * inv_t - ms);
        zt = zt + exp(teacher[base + j] * inv_t - mt);
    }
    let lse_s = ms + log(zs);
    let lse_t = mt + log(zt);
    if (col < k) {
        let q = exp(student[base + col] * inv_t - lse_s);
        let p = exp(teacher[base + col] * inv_t - lse_t);
        out[i] = (q - p) * inv_t * inv_n;
    } else {
        var l = 0.0;
        for (var j = 0u; j < k; j = j + 1u) {
            let log_p = teacher[base + j] * inv_t - lse_t;
            let log_q = student[base + j] * inv_t - lse_s;
            l = l + exp(log_p) * (log_p - log_q);
        }
        out[i] = l * inv_n;
    }
}
