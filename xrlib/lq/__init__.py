"""Low-quality (DRR-like) twins of real X-rays (DDPM-LQ, MUNIT-LQ, bicubic), the paired training set, translation checks."""
