#!/usr/bin/env python3
"""Generates the two synthetic chaotic series shipped in data/synthetic/.

    python3 data/generate_chaotic.py [--out data/synthetic]

Pure standard-library Python; the output is bitwise reproducible on any IEEE-754 machine
(only +, -, *, / are used, each correctly rounded; powers are written as products).

mackey_glass.csv -- the Mackey-Glass delay differential equation
    dx/dt = beta x(t - tau) / (1 + x(t - tau)^n) - gamma x(t),
    beta = 0.2, gamma = 0.1, n = 10, tau = 17 (M. C. Mackey, L. Glass, Science 197, 1977),
    the chaotic regime used as a forecasting benchmark since A. Lapedes, R. Farber (1987).
    Integrator: classical 4th-order Runge-Kutta with step h = 0.1 (tau / h = 170 steps).
    The delayed argument at t - tau and t - tau + h is a stored grid value; at the half
    step t - tau + h/2 it is the cubic Hermite interpolant of the stored trajectory and its
    stored derivative, x_mid = (x_k + x_k+1)/2 + h (f_k - f_k+1)/8 (the method of steps
    with dense output; the interpolation error O(h^4) matches RK4). History: x(t) = 1.2
    for t <= 0, used as is for steps whose delayed interval lies in it (so the derivative
    jump at t = 0 is never interpolated across, which would cost two orders). The first 1200 time units are dropped as transient; then
    one sample every 6 time units (the classic benchmark's spacing: predicting x(t+6) from
    x(t), x(t-6), x(t-12), x(t-18) is one step ahead with 4 lags), 2000 samples.

lorenz.csv -- the Lorenz system
    dx/dt = sigma (y - x), dy/dt = x (rho - z) - y, dz/dt = x y - beta z,
    sigma = 10, rho = 28, beta = 8/3 (E. N. Lorenz, J. Atmos. Sci. 20, 1963).
    Integrator: classical 4th-order Runge-Kutta with step h = 0.01 from (1, 1, 1). The
    first 50 time units are dropped as transient; then one sample every 0.1 time units
    (every 10 steps), 4000 samples of x, y and z.

Values are written with 10 significant digits; the first column is `step` (0..N-1), as in
data/README conventions.
"""

import argparse
import os


def mackey_glass(samples=2000, h=0.1, tau=17.0, beta=0.2, gamma=0.1, x0=1.2,
                 transient=1200.0, every=6.0):
    delay = int(round(tau / h))
    stride = int(round(every / h))
    skip = int(round(transient / h))
    total = skip + stride * (samples - 1) + 1

    def rhs(x, xd):
        xd2 = xd * xd
        xd4 = xd2 * xd2
        xd8 = xd4 * xd4
        return beta * xd / (1.0 + xd8 * xd2) - gamma * x

    xs = [x0]   # x at grid points k = 0, 1, ...
    fs = []     # dx/dt at grid points (filled as the step that needs it is taken)

    def delayed(k):
        """x and dx/dt at grid point k - delay (constant history before t = 0)."""
        j = k - delay
        if j < 0:
            return x0, 0.0
        return xs[j], fs[j]

    for k in range(total - 1):
        x = xs[k]
        xd0, fd0 = delayed(k)
        xd1, fd1 = delayed(k + 1)
        if k + 1 - delay <= 0:
            xdm = x0  # the whole interval lies in the constant history
        else:
            xdm = 0.5 * (xd0 + xd1) + h * (fd0 - fd1) / 8.0
        f0 = rhs(x, xd0)
        fs.append(f0)
        k1 = f0
        k2 = rhs(x + 0.5 * h * k1, xdm)
        k3 = rhs(x + 0.5 * h * k2, xdm)
        k4 = rhs(x + h * k3, xd1)
        xs.append(x + h * (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0)
    return [xs[skip + i * stride] for i in range(samples)]


def lorenz(samples=4000, h=0.01, sigma=10.0, rho=28.0, beta=8.0 / 3.0,
           transient=50.0, every=0.1):
    stride = int(round(every / h))
    skip = int(round(transient / h))

    def rhs(s):
        x, y, z = s
        return (sigma * (y - x), x * (rho - z) - y, x * y - beta * z)

    def axpy(a, u, v):
        return tuple(vi + a * ui for ui, vi in zip(u, v))

    s = (1.0, 1.0, 1.0)
    out = []
    step = 0
    while len(out) < samples:
        if step >= skip and (step - skip) % stride == 0:
            out.append(s)
        k1 = rhs(s)
        k2 = rhs(axpy(0.5 * h, k1, s))
        k3 = rhs(axpy(0.5 * h, k2, s))
        k4 = rhs(axpy(h, k3, s))
        s = tuple(si + h * (a + 2.0 * b + 2.0 * c + d) / 6.0
                  for si, a, b, c, d in zip(s, k1, k2, k3, k4))
        step += 1
    return out


def write(path, header, rows):
    with open(path, "w", newline="\n") as f:
        f.write(",".join(header) + "\n")
        for i, row in enumerate(rows):
            f.write(",".join([str(i)] + ["%.10g" % v for v in row]) + "\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(here, "synthetic"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    write(os.path.join(args.out, "mackey_glass.csv"), ["step", "x"],
          [(v,) for v in mackey_glass()])
    write(os.path.join(args.out, "lorenz.csv"), ["step", "x", "y", "z"], lorenz())


if __name__ == "__main__":
    main()
