"""In-place optimizer updates over flat buffers. CONTRACT STUB: replaced by the implementation.

sgd_step(param, grad, momentum_buffer, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
         nesterov=False, maximize=False, first_step=False, l1=0.0, l2=0.0, backend=None)
adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, lr=1e-3, beta1=0.9,
          beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
          maximize=False, l1=0.0, l2=0.0, backend=None)
rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, *, lr=1e-2, alpha=0.99, eps=1e-8,
             weight_decay=0.0, momentum=0.0, centered=False, maximize=False, l1=0.0, l2=0.0,
             backend=None)
adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
             maximize=False, l1=0.0, l2=0.0, backend=None)
adadelta_step(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
              maximize=False, l1=0.0, l2=0.0, backend=None)
"""
