package selector

// targetHeap is a binary heap of targets that records each target's position
// in the target itself, so that removal is O(log n). Two orders use it: the
// pending queue (best value per MiB first) and the restart-delay queue
// (earliest ready first).
type targetHeap struct {
	items []*target
	less  func(a, b *target) bool
	pos   func(t *target) *int
}

func (h *targetHeap) len() int { return len(h.items) }

func (h *targetHeap) peek() *target { return h.items[0] }

func (h *targetHeap) contains(t *target) bool {
	i := *h.pos(t)
	return i >= 0 && i < len(h.items) && h.items[i] == t
}

func (h *targetHeap) push(t *target) {
	*h.pos(t) = len(h.items)
	h.items = append(h.items, t)
	h.up(len(h.items) - 1)
}

func (h *targetHeap) pop() *target {
	t := h.items[0]
	h.removeAt(0)
	return t
}

func (h *targetHeap) remove(t *target) {
	if h.contains(t) {
		h.removeAt(*h.pos(t))
	}
}

func (h *targetHeap) removeAt(i int) {
	t := h.items[i]
	n := len(h.items) - 1
	if i != n {
		h.swap(i, n)
	}
	h.items[n] = nil
	h.items = h.items[:n]
	if i != n {
		h.down(i)
		h.up(i)
	}
	*h.pos(t) = -1
}

func (h *targetHeap) swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	*h.pos(h.items[i]) = i
	*h.pos(h.items[j]) = j
}

func (h *targetHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(h.items[i], h.items[p]) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h *targetHeap) down(i int) {
	n := len(h.items)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h.less(h.items[r], h.items[l]) {
			m = r
		}
		if !h.less(h.items[m], h.items[i]) {
			return
		}
		h.swap(i, m)
		i = m
	}
}

func newPendingQueue() targetHeap {
	return targetHeap{
		less: func(a, b *target) bool {
			if a.priority != b.priority {
				return a.priority > b.priority
			}
			return a.name < b.name
		},
		pos: func(t *target) *int { return &t.qidx },
	}
}

func newDelayQueue() targetHeap {
	return targetHeap{
		less: func(a, b *target) bool {
			if !a.readyAt.Equal(b.readyAt) {
				return a.readyAt.Before(b.readyAt)
			}
			return a.name < b.name
		},
		pos: func(t *target) *int { return &t.didx },
	}
}
