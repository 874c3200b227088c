#include "h.h"
int f(int a)
{
	if (a)
		return sq(a);
	return 1;
}
int main(int c, char **v) { return f(c) > 1000; }
