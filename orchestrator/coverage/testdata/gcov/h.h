static inline int sq(int x)
{
	if (x > 100)
		return 0;
	return x * x;
}
